r"""How many training steps the demo needs: ``nflows-edu demo``'s run (``realnvp(2)`` on
checkerboard, batch 512, peak learning rate with 200 warm-up steps and cosine decay, float32,
KL on 1,000,000 fresh points) at several step counts and peak learning rates, seed by seed.

The seed moves the KL more than one run's standard error does, so each seed is run in every
setting and the table gives, besides each setting's mean over seeds (with its standard
error over the seeds), the mean paired difference from the first setting with its standard
error: the cost in KL of training for fewer steps. Training time per step is measured in the
same run (the settings interleaved, one BLAS thread).

Run:  python benchmarks/demo_steps.py [--settings 5000:3e-3 4000:3e-3 3000:3e-3] [--seeds 8]
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


def run_one(steps, lr, seed):
    """The demo's run at ``steps`` steps and peak learning rate ``lr``: (KL, its standard
    error, training seconds)."""
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        metrics = recipes.run(recipes.Run("realnvp", "checkerboard", steps, 512, lr, out,
                                          seed=seed, dtype="float32", overwrite=True,
                                          progress=False, threads=1, n_test=recipes.N_TEST))
    return metrics["kl"], metrics["kl_se"], metrics["train_seconds"]


def mean_se(values):
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["5000:3e-3", "4000:3e-3", "3000:3e-3"],
                        help="STEPS:LR pairs; the first is the reference (default: the demo's "
                             "5000 steps at recipes.LR 3e-3, then fewer steps)")
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0 .. SEEDS-1 (default 8)")
    args = parser.parse_args(argv)
    settings = [(int(a), float(b)) for a, b in (s.split(":") for s in args.settings)]
    names = [f"{steps}:{lr:g}" for steps, lr in settings]
    kl = {n: [] for n in names}
    per_step = {n: [] for n in names}
    print("seed  " + "  ".join(f"{n:>12s}: KL +- SE" for n in names))
    for seed in range(args.seeds):
        cells = []
        for name, (steps, lr) in zip(names, settings):
            value, se, seconds = run_one(steps, lr, seed)
            kl[name].append(value)
            per_step[name].append(seconds / steps)
            cells.append(f"{value:12.4f} +- {se:.4f}")
        print(f"{seed:4d}  " + "  ".join(f"{c:>24s}" for c in cells), flush=True)
    first = names[0]
    print(f"\nsteps:lr over {args.seeds} seeds (mean +- standard error over the seeds):")
    for name, (steps, _) in zip(names, settings):
        m, se = mean_se(kl[name])
        line = f"{name:>12s}: KL {m:.4f} +- {se:.4f}"
        if name != first:
            d, d_se = mean_se(np.subtract(kl[name], kl[first]))
            line += f"; minus {first}, paired: {d:+.4f} +- {d_se:.4f}"
        line += (f"; training {np.median(per_step[name]) * 1e3:.2f} ms per step (median), "
                 f"{np.median(per_step[name]) * steps:.1f} s")
        print(line)


if __name__ == "__main__":
    main()
