r"""Sequential versus parallel directions of MAF and IAF, measured in one run.

For ``maf(D, n_layers=5, hidden=(256, 256))`` and N = 1024 examples, in float32 and float64:

* MAF: time(sample) / time(log_prob)  -- sampling is the sequential direction
* IAF: time(log_prob) / time(sample)  -- the density of a given point is the sequential one

at D = 16 and D = 64. Target: <= 2 at D = 64 (two PyTorch libraries needed 53x and 71x on a
2-core CPU: their sampling redoes the network D times). The sequential direction runs the
Numba kernel ``nflows_edu.kernels.maf_inverse``; ``--reference`` also times the plain NumPy
loop (D full MADE passes) for comparison.

Everything runs on one thread (BLAS limited by threadpoolctl; the kernel is serial). The
first call of each dtype, which compiles the kernel or loads it from the cache, is timed
separately.

Run:  python benchmarks/autoregressive.py [--repeats 5] [--reference]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import nflows_edu  # noqa: F401  (an installed copy, or one on PYTHONPATH)
except ImportError:    # run from a checkout: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_limits  # noqa: E402

from nflows_edu import kernels, models  # noqa: E402

N = 1024
N_LAYERS = 5
HIDDEN = (256, 256)


def best_time(fn, repeats):
    """The fastest of ``repeats`` calls, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def build(name, dim, dtype, seed=0):
    rng = np.random.default_rng(seed)
    flow = models.MODELS[name](dim, n_layers=N_LAYERS, hidden=HIDDEN, rng=rng, dtype=dtype)
    for _, p, _ in flow.parameters():  # away from the identity start: realistic values
        p += (0.05 * rng.standard_normal(p.shape)).astype(dtype)
    return flow


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference", action="store_true",
                        help="also time MAF sampling with the NumPy reference loop (slow)")
    args = parser.parse_args(argv)
    print(f"maf/iaf(D, n_layers={N_LAYERS}, hidden={HIDDEN}), N = {N}; one thread; "
          f"best of {args.repeats}")

    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for dtype in (np.float32, np.float64):
            flow = build("maf", 4, dtype)
            t0 = time.perf_counter()
            flow.sample(2, rng)
            print(f"first call ({np.dtype(dtype).name}): {time.perf_counter() - t0:.2f} s "
                  "(compile, or load from the cache)")
        print(f"{'model':5s} {'dtype':8s} {'D':>3s} {'parallel ms':>12s} "
              f"{'sequential ms':>14s} {'ratio':>6s}"
              + (f" {'NumPy loop ms':>14s} {'ratio':>6s}" if args.reference else ""))
        for name in ("maf", "iaf"):
            for dtype in (np.float32, np.float64):
                for dim in (16, 64):
                    flow = build(name, dim, dtype)
                    x = flow.sample(N, rng)  # points to evaluate
                    if name == "maf":  # parallel: density; sequential: sampling
                        parallel = lambda: flow.log_prob(x)  # noqa: E731
                        sequential = lambda: flow.sample(N, rng)  # noqa: E731
                    else:
                        parallel = lambda: flow.sample(N, rng)  # noqa: E731
                        sequential = lambda: flow.log_prob(x)  # noqa: E731
                    t_par = best_time(parallel, args.repeats)
                    t_seq = best_time(sequential, args.repeats)
                    line = (f"{name:5s} {np.dtype(dtype).name:8s} {dim:3d} {1e3 * t_par:12.2f} "
                            f"{1e3 * t_seq:14.2f} {t_seq / t_par:6.2f}")
                    if args.reference and name == "maf":
                        for layer in flow.bijector.layers:
                            layer.use_kernel = False
                        t_ref = best_time(sequential, 1)
                        line += f" {1e3 * t_ref:14.1f} {t_ref / t_par:6.1f}"
                    print(line, flush=True)
    print("ratio = sequential / parallel direction, in the same run (target <= 2 at D = 64)")
    print(f"kernel tile: {kernels.TILE} examples")


if __name__ == "__main__":
    main()
