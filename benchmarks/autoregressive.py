r"""Sequential versus parallel directions of MAF, IAF and the autoregressive spline flow, as a
user waits for them.

For ``maf(D, n_layers=5, hidden=(256, 256))`` and N = 1024 examples, in float32 and float64:

* MAF: time(sample) / time(log_prob)  -- sampling is the sequential direction
* IAF: time(log_prob) / time(sample)  -- the density of a given point is the sequential one

at D = 16 and D = 64; and for ``nsf_ar(64)`` (its defaults: 5 layers, hidden (64, 64), 8
bins on [-4, 4]) time(sample) / time(log_prob). Target: <= 2 at D = 64 (two PyTorch
libraries needed 53x and 71x on a 2-core CPU: their sampling redoes the network D times).
The sequential direction runs the Numba kernel ``nflows_edu.kernels.maf_inverse`` (nsf_ar:
``spline_ar_inverse``, built the same way), whose tiles of examples run on as many
threads as BLAS uses for the parallel direction's products; ``--reference`` also times the
plain NumPy loop (D full MADE passes) for comparison.

Each (model, dtype, D) is measured in a **fresh process** that only imports the library,
builds the flow and calls ``flow.log_prob`` and ``flow.sample``, with the library's default
threads (pass ``--threads 1`` to limit BLAS, and so the kernel, to one thread). Its first call
of each direction is timed on its own (it compiles the kernel or loads it from the cache);
then the two directions are called alternately (f, g, f, g, ...: a change in the machine's
load slows both alike) ``--repeats`` times. Printed: the median **wall-clock** time of a call
(what the user waits) and, beside it, the median CPU time of the process (all its threads:
with two threads busy it is about twice the wall time). Ratios are of the same run's medians.

On a shared machine the wall times, and with them the ratios, move with the other processes'
load: run it twice, or with ``--threads 1`` beside other work.

Run:  python benchmarks/autoregressive.py [--repeats 9] [--threads N] [--reference]
                                          [--models maf,iaf,nsf_ar]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    import nflows_edu  # noqa: F401  (an installed copy, or one on PYTHONPATH)
except ImportError:    # run from a checkout: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N = 1024
N_LAYERS = 5
HIDDEN = (256, 256)
CASES = [(name, dtype, dim) for name in ("maf", "iaf") for dtype in ("float32", "float64")
         for dim in (16, 64)]
CASES += [("nsf_ar", dtype, 64) for dtype in ("float32", "float64")]
# the models whose sampling is the sequential direction (IAF's is its density)
SEQUENTIAL_SAMPLING = ("maf", "nsf_ar")


def build(name, dim, dtype, seed=0):
    from nflows_edu import models
    rng = np.random.default_rng(seed)
    sizes = {} if name == "nsf_ar" else dict(n_layers=N_LAYERS, hidden=HIDDEN)  # its defaults
    flow = models.MODELS[name](dim, **sizes, rng=rng, dtype=dtype)
    for _, p, _ in flow.parameters():  # away from the identity start: realistic values
        p += (0.05 * rng.standard_normal(p.shape)).astype(dtype)
    return flow


def timed(fn):
    """(wall seconds, CPU seconds of the process) of one call of ``fn``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def worker(name, dtype, dim, repeats, threads, reference):
    """One fresh process: time the public API calls; print one JSON line."""
    import contextlib

    from threadpoolctl import threadpool_limits

    from nflows_edu import threads as nf_threads
    limit = threadpool_limits(threads, user_api="blas") if threads else contextlib.nullcontext()
    with limit:
        rng = np.random.default_rng(0)
        flow = build(name, dim, np.dtype(dtype))
        # the first call of each direction in the process (it compiles the kernel, or loads it
        # from the cache); the points to evaluate are the flow's own samples
        w0 = time.perf_counter()
        x = flow.sample(N, rng)
        first_sample = time.perf_counter() - w0
        first_density = timed(lambda: flow.log_prob(x))[0]
        if name in SEQUENTIAL_SAMPLING:  # parallel: density; sequential: sampling
            parallel = lambda: flow.log_prob(x)  # noqa: E731
            sequential = lambda: flow.sample(N, rng)  # noqa: E731
            first_par, first_seq = first_density, first_sample
        else:
            parallel = lambda: flow.sample(N, rng)  # noqa: E731
            sequential = lambda: flow.log_prob(x)  # noqa: E731
            first_par, first_seq = first_sample, first_density
        rows = {"parallel": [], "sequential": []}
        for _ in range(repeats):
            rows["parallel"].append(timed(parallel))
            rows["sequential"].append(timed(sequential))
        out = {k: np.median(np.array(v), axis=0).tolist() for k, v in rows.items()}
        out.update(first_parallel=first_par, first_sequential=first_seq,
                   blas_threads=nf_threads.blas_thread_count())
        if reference and name in SEQUENTIAL_SAMPLING:
            for layer in flow.bijector.layers:
                layer.use_kernel = False
            out["reference"] = timed(sequential)
    print(json.dumps(out))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None,
                        help="limit BLAS (and so the kernel) to this many threads")
    parser.add_argument("--reference", action="store_true",
                        help="also time MAF's and nsf_ar's sampling with the NumPy reference "
                             "loop (slow)")
    parser.add_argument("--models", default="maf,iaf,nsf_ar",
                        help="comma-separated models to time (default: all three)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "DTYPE", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        name, dtype, dim = args.worker
        worker(name, dtype, int(dim), args.repeats, args.threads, args.reference)
        return

    from nflows_edu import kernels
    from nflows_edu.threads import blas_info
    print(blas_info())
    chosen = args.models.split(",")
    unknown = sorted(set(chosen) - {name for name, _, _ in CASES})
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; expected maf, iaf or nsf_ar")
    print(f"maf/iaf(D, n_layers={N_LAYERS}, hidden={HIDDEN}), nsf_ar(D) (its defaults), "
          f"N = {N}; each row a fresh process; "
          f"median of {args.repeats} calls; threads: "
          + (f"{args.threads} (BLAS and kernel)" if args.threads else "the library's default"))
    head = (f"{'model':6s} {'dtype':8s} {'D':>3s} | {'wall ms: parallel':>17s} {'sequential':>10s} "
            f"{'ratio':>5s} | {'CPU ms: parallel':>16s} {'sequential':>10s} {'ratio':>5s} | "
            f"{'first calls s':>13s} {'threads':>7s}")
    if args.reference:
        head += f" | {'NumPy loop ms':>13s} {'ratio':>5s}"
    print(head)
    for name, dtype, dim in [case for case in CASES if case[0] in chosen]:
        cmd = [sys.executable, __file__, "--worker", name, dtype, str(dim),
               "--repeats", str(args.repeats)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--reference"] if args.reference else []
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode:
            sys.exit(f"{name} {dtype} D={dim} failed:\n{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        (wp, cp), (ws, cs) = r["parallel"], r["sequential"]
        line = (f"{name:6s} {dtype:8s} {dim:3d} | {1e3 * wp:17.2f} {1e3 * ws:10.2f} {ws / wp:5.2f} | "
                f"{1e3 * cp:16.2f} {1e3 * cs:10.2f} {cs / cp:5.2f} | "
                f"{r['first_parallel']:6.2f} {r['first_sequential']:6.2f} {r['blas_threads']:7d}")
        if args.reference and "reference" in r:
            line += f" | {1e3 * r['reference'][0]:13.1f} {r['reference'][0] / wp:5.1f}"
        print(line, flush=True)
    print("ratio = sequential / parallel direction, medians of the same process "
          "(target <= 2 at D = 64, wall clock)")
    print(f"kernel tile: {kernels.TILE} examples")


if __name__ == "__main__":
    main()
