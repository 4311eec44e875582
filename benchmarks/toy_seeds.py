r"""KL(p || q) of any 2-D model on checkerboard and 8gaussians over seeds, and its cost per step.

Each run is exactly ``nflows-edu train --model M --data D --seed S`` (5000 steps, batch 512,
lr 3e-3 with warm-up and cosine decay, 100,000 training points, the model's own 2-D defaults,
float64, KL on 1,000,000 fresh points). One run's KL has a small standard error (about
0.0002-0.0005 nats); the seed moves it more, so the table gives every seed, the mean over
seeds with its standard error over the seeds, and the training time per step. With one worker
(the default) the runs go one after the other, the models interleaved, so the models' times
per step are measured in one run under the same load.

Run:  python benchmarks/toy_seeds.py --models nsf realnvp [--seeds 4] [--workers 1]
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

from nflows_edu import cli, models  # noqa: E402

DATA = ("checkerboard", "8gaussians")


def run_one(model, data, seed, steps, **options):
    """One ``nflows-edu train`` run; returns (KL, its standard error, training seconds)."""
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        metrics = cli.run_training(model, data, steps, 512, cli.LR, out, seed=seed,
                                   progress=False, threads=1, **options)
    return metrics["kl"], metrics["kl_se"], metrics["train_seconds"]


def summary(label, kl, seconds, steps, target=None):
    """Lines for one (model, data): every seed's KL, then the mean over seeds +- its standard
    error and the mean training time per step."""
    kl = np.asarray(kl)
    lines = [label, "  " + "  ".join(f"seed {s}: {v:.4f}" for s, v in enumerate(kl))]
    se = kl.std(ddof=1) / np.sqrt(len(kl)) if len(kl) > 1 else float("nan")
    reached = "" if target is None else f"; {int(np.sum(kl <= target))} of {len(kl)} <= {target}"
    lines.append(f"  mean over seeds {kl.mean():.4f} +- {se:.4f} (standard error over seeds)"
                 f"{reached}; training {np.mean(seconds):.1f} s per run, "
                 f"{1e3 * np.mean(seconds) / steps:.2f} ms per step")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nsf", "realnvp"],
                        choices=sorted(set(models.MODELS) - set(models.IMAGE_MODELS)))
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0 .. SEEDS-1 (default 4)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--target", type=float, default=None, help="count seeds at most this")
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=DATA)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # the models interleaved, so a change in the machine's load hits every model alike
    jobs = [(m, d, s) for d in args.data for s in range(args.seeds) for m in args.models]
    with ProcessPoolExecutor(args.workers) as pool:
        results = dict(zip(jobs, pool.map(run_one, *zip(*jobs), [args.steps] * len(jobs))))

    print(f"{args.steps} steps at batch 512, seeds 0-{args.seeds - 1}, float64, one BLAS "
          f"thread, {args.workers} run(s) at a time: KL(p || q) in nats")
    per_step = {}
    for m in args.models:
        for d in args.data:
            rows = [results[(m, d, s)] for s in range(args.seeds)]
            print("\n".join(summary(f"\n{m}(2) on {d}", [r[0] for r in rows],
                                    [r[2] for r in rows], args.steps, args.target)))
            print("  each run's own standard error: " + ", ".join(f"{r[1]:.4f}" for r in rows))
            per_step.setdefault(m, []).extend(r[2] / args.steps for r in rows)
    if len(args.models) > 1:
        first = args.models[0]
        for m in args.models[1:]:
            ratio = np.mean(per_step[first]) / np.mean(per_step[m])
            print(f"\na training step of {first} costs {ratio:.2f}x one of {m} (mean time per "
                  f"step over all its runs, measured in this run)")
    print(f"\nwall time: {time.perf_counter() - start:.1f} s with {args.workers} worker(s) "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
