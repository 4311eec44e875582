r"""Continuous flows on the 2-D toys: KL, training time and function evaluations, beside the
best discrete flow here (``nsf``) and its training time, measured in one run.

Each run is exactly ``nflows-edu train --model M --data D --seed S --steps STEPS`` (batch
512, lr 3e-3 with warm-up and cosine decay, 100,000 training points, the model's own 2-D
defaults, one BLAS thread):

* ``flow_matching``: regression on straight paths, one field evaluation per step and no ODE
  (the CLI's defaults for it: a 128x128x128 field with sine units, float32, the marginal
  target ``flow_matching.MarginalTarget``: a k-d tree search and a softmax over 2048
  reference points per step);
* ``ffjord`` (float64): maximum likelihood through 8 RK4 steps, 32 field evaluations with the exact
  trace (D Jacobian-vector products each) and their VJPs per step (the CLI's 64x64 field of
  sine units);
* ``nsf`` (float64): the spline coupling flow, at its README protocol of 5000 steps.

The KL is the CLI's, printed with its standard error: on 100,000 fresh points for the
continuous flows (``cli.N_TEST_CONTINUOUS``), 1,000,000 for nsf; over seeds, the mean with
its standard error over the seeds. Function evaluations: per training step (above), per
density or sample with the models' own 8 RK4 steps (32 per direction), and the number
adaptive dopri5 takes at rtol = atol = 1e-5 to carry 1000 base samples back to data (how
stiff the learned field is). The runs go one after another (or ``--workers`` at a time),
the models interleaved, so their times are measured under the same load.

Run:  python benchmarks/continuous_toys.py [--seeds 2] [--fm-steps 100000]
          [--ffjord-steps 2000] [--workers 1] [--models flow_matching ffjord nsf]
"""
import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

try:
    import nflows_edu  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nflows_edu import cli, ode  # noqa: E402
from nflows_edu import io as nf_io  # noqa: E402
from nflows_edu.threads import blas_threads  # noqa: E402

DATA = ("checkerboard", "8gaussians")
MODELS = ("flow_matching", "ffjord", "nsf")


def dopri5_sampling_nfe(flow, seed, n=1000, tol=1e-5):
    """Field evaluations dopri5 takes to carry n base samples from t = 1 back to t = 0."""
    cnf = flow.bijector.layers[0]
    z = np.random.default_rng(seed).standard_normal((n, flow.dim))
    with blas_threads(1):
        _, nfe = ode.dopri5(lambda t, x: cnf.field.forward(x, t)[0], z, 1.0, 0.0, tol, tol)
    return nfe


def run_one(model, data, seed, steps):
    """One ``nflows-edu train`` run: (KL, its SE, training seconds, dopri5 NFE or None)."""
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        metrics = cli.run_training(model, data, steps, 512, cli.LR, out, seed=seed,
                                   progress=False, threads=1)
        nfe = None
        if model in cli.CONTINUOUS:
            nfe = dopri5_sampling_nfe(nf_io.load(os.path.join(out, "model.npz")), seed)
    return metrics["kl"], metrics["kl_se"], metrics["train_seconds"], nfe


def mean_se(values):
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{values.mean():.4f} +- {se:.4f}"


PER_STEP = {"flow_matching": "1 (no ODE)",
            "ffjord": "32 with the exact trace, and their VJPs",
            "nsf": "(no ODE: 8 spline couplings)"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0 .. SEEDS-1 (default 2)")
    parser.add_argument("--fm-steps", type=int, default=100000)
    parser.add_argument("--ffjord-steps", type=int, default=2000)
    parser.add_argument("--nsf-steps", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=DATA)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    steps = {"flow_matching": args.fm_steps, "ffjord": args.ffjord_steps, "nsf": args.nsf_steps}
    jobs = [(m, d, s) for d in args.data for s in range(args.seeds) for m in args.models]
    with ProcessPoolExecutor(args.workers) as pool:
        results = dict(zip(jobs, pool.map(run_one, *zip(*jobs),
                                          [steps[m] for m, _, _ in jobs])))
    print(f"batch 512, lr {cli.LR:g} with warm-up and cosine decay, 100,000 training points, "
          f"the CLI's 2-D defaults (flow_matching in float32, the others in float64), one BLAS "
          f"thread, {args.workers} run(s) at a time; "
          f"KL(p || q) in nats")
    for data in args.data:
        for model in args.models:
            rows = [results[(model, data, s)] for s in range(args.seeds)]
            print(f"\n{model}(2) on {data}, {steps[model]} steps:")
            for seed, (kl, se, seconds, nfe) in enumerate(rows):
                extra = "" if nfe is None else f", dopri5 NFE to sample {nfe}"
                print(f"  seed {seed}: KL {kl:.4f} +- {se:.4f}, training {seconds:.1f} s{extra}")
            line = (f"  mean over seeds: KL {mean_se([r[0] for r in rows])}; training "
                    f"{np.mean([r[2] for r in rows]):.1f} s "
                    f"({1e3 * np.mean([r[2] for r in rows]) / steps[model]:.2f} ms per step); "
                    f"field evaluations per training step: {PER_STEP[model]}")
            if model in cli.CONTINUOUS:
                line += (f"; per density or sample: 32 (8 RK4 steps); dopri5 to sample: "
                         f"{np.mean([r[3] for r in rows]):.0f}")
            print(line)
    print(f"\nwall time: {time.perf_counter() - start:.1f} s with {args.workers} worker(s)")


if __name__ == "__main__":
    main()
