r"""How many training steps the demo needs: ``nflows-edu demo``'s run (``realnvp(2)`` on
checkerboard, batch 512, lr 3e-3 with warm-up and cosine decay, float32, KL on 1,000,000
fresh points) at several step counts, seed by seed.

The seed moves the KL more than one run's standard error does, so each seed is run at every
step count and the table gives, besides each setting's mean over seeds (with its standard
error over the seeds), the mean paired difference from the first setting with its standard
error: the cost in KL of training for fewer steps. Training time per step is measured in the
same run (the settings interleaved, one BLAS thread).

Run:  python benchmarks/demo_steps.py [--steps 5000 4000 3000] [--seeds 8]
"""
import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import nflows_edu  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nflows_edu import recipes  # noqa: E402


def run_one(steps, seed):
    """The demo's run at ``steps`` steps: (KL, its standard error, training seconds)."""
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        metrics = recipes.run(recipes.Run("realnvp", "checkerboard", steps, 512, recipes.LR,
                                          out, seed=seed, dtype="float32", overwrite=True,
                                          progress=False, threads=1))
    return metrics["kl"], metrics["kl_se"], metrics["train_seconds"]


def mean_se(values):
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[5000, 4000, 3000])
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0 .. SEEDS-1 (default 8)")
    args = parser.parse_args(argv)
    kl = {s: [] for s in args.steps}
    per_step = {s: [] for s in args.steps}
    print("seed  " + "  ".join(f"{s:>6d} steps: KL +- SE" for s in args.steps))
    for seed in range(args.seeds):
        cells = []
        for steps in args.steps:
            value, se, seconds = run_one(steps, seed)
            kl[steps].append(value)
            per_step[steps].append(seconds / steps)
            cells.append(f"{value:12.4f} +- {se:.4f}")
        print(f"{seed:4d}  " + "  ".join(cells), flush=True)
    first = args.steps[0]
    print(f"\nover {args.seeds} seeds (mean +- standard error over the seeds):")
    for steps in args.steps:
        m, se = mean_se(kl[steps])
        line = f"{steps:6d} steps: KL {m:.4f} +- {se:.4f}"
        if steps != first:
            d, d_se = mean_se(np.subtract(kl[steps], kl[first]))
            line += f"; minus {first} steps, paired: {d:+.4f} +- {d_se:.4f}"
        line += (f"; training {np.median(per_step[steps]) * 1e3:.2f} ms per step (median), "
                 f"{np.median(per_step[steps]) * steps:.1f} s")
        print(line)


if __name__ == "__main__":
    main()
