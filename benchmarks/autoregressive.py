r"""Sequential versus parallel directions of MAF and IAF, measured in one run.

For ``maf(D, n_layers=5, hidden=(256, 256))`` and N = 1024 examples, in float32 and float64:

* MAF: time(sample) / time(log_prob)  -- sampling is the sequential direction
* IAF: time(log_prob) / time(sample)  -- the density of a given point is the sequential one

at D = 16 and D = 64. Target: <= 2 at D = 64 (two PyTorch libraries needed 53x and 71x on a
2-core CPU: their sampling redoes the network D times). The sequential direction runs the
Numba kernel ``nflows_edu.kernels.maf_inverse``; ``--reference`` also times the plain NumPy
loop (D full MADE passes) for comparison.

Everything runs on one thread (BLAS limited by threadpoolctl; the kernel is serial), so the
times are CPU times of this process (``time.process_time``): on a quiet machine the same as
the wall time, and on a shared one they do not count the time the other processes take.
The two directions are timed alternately, best of ``--repeats``. The first call of each
dtype, which compiles the kernel or loads it from the cache, is timed separately (wall time).

Both directions run after ``fast.keep_freed_memory()`` (what ``train.fit`` runs with), so
glibc keeps freed memory in the process. Without it the page faults of a call depend on
which arrays earlier calls freed: measured, MAF's float32 ``log_prob`` paid 5,700 page faults
per call (15 ms of system time) while IAF's ``sample``, the same five MADE passes, paid none,
so the same kernel over the same passes printed 1.3 for MAF and 2.1 for IAF.

Run:  python benchmarks/autoregressive.py [--repeats 7] [--reference]
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

from nflows_edu import fast, kernels, models  # noqa: E402

N = 1024
N_LAYERS = 5
HIDDEN = (256, 256)


def best_times(fns, repeats):
    """The fastest of ``repeats`` calls of each function, in seconds (the least disturbed by
    other work). The calls alternate (f, g, f, g, ...), so a change in the machine's load
    during the run slows both alike instead of biasing their ratio."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.process_time()
            fn()
            t.append(time.process_time() - t0)
    return [min(t) for t in times]


def build(name, dim, dtype, seed=0):
    rng = np.random.default_rng(seed)
    flow = models.MODELS[name](dim, n_layers=N_LAYERS, hidden=HIDDEN, rng=rng, dtype=dtype)
    for _, p, _ in flow.parameters():  # away from the identity start: realistic values
        p += (0.05 * rng.standard_normal(p.shape)).astype(dtype)
    return flow


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference", action="store_true",
                        help="also time MAF sampling with the NumPy reference loop (slow)")
    args = parser.parse_args(argv)
    fast.keep_freed_memory()
    print(f"maf/iaf(D, n_layers={N_LAYERS}, hidden={HIDDEN}), N = {N}; one thread; CPU time, "
          f"best of {args.repeats}; fast.keep_freed_memory()")

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
                    t_par, t_seq = best_times((parallel, sequential), args.repeats)
                    line = (f"{name:5s} {np.dtype(dtype).name:8s} {dim:3d} {1e3 * t_par:12.2f} "
                            f"{1e3 * t_seq:14.2f} {t_seq / t_par:6.2f}")
                    if args.reference and name == "maf":
                        for layer in flow.bijector.layers:
                            layer.use_kernel = False
                        t_ref, = best_times((sequential,), 1)
                        line += f" {1e3 * t_ref:14.1f} {t_ref / t_par:6.1f}"
                    print(line, flush=True)
    print("ratio = sequential / parallel direction, in the same run (target <= 2 at D = 64)")
    print(f"kernel tile: {kernels.TILE} examples")


if __name__ == "__main__":
    main()
