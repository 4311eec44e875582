r"""KL(p || q) of ``maf(2)`` on checkerboard and 8gaussians over seeds, with two settings.

Each run is exactly ``nflows-edu train --model maf --data D --seed S`` (5000
steps, batch 512, lr 3e-3 with warm-up and cosine decay, 100,000 training points, KL on
1,000,000 fresh points), once with the settings the other models use on the 2-D toys (64x64
MADEs, Adam's beta2 0.999) and once with maf's own (``cli.TOY_DEFAULTS``: three hidden layers
of 64, beta2 0.99). The KL of one run has a small standard error (about 0.0005 nats); the
seed moves it much more, so the table gives every seed, the mean over seeds with its
standard error, and how many seeds reach 0.10.

Run:  python benchmarks/maf_toys.py [--seeds 8] [--workers 2] [--data ...]
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

from nflows_edu import cli  # noqa: E402

SETTINGS = {  # name: (hidden, beta2)
    "64x64, beta2 0.999": ((64, 64), 0.999),
    "maf's own: 64x64x64, beta2 0.99": (cli.TOY_DEFAULTS["maf"]["hidden"],
                                        cli.TOY_DEFAULTS["maf"]["beta2"]),
}
TARGET = 0.10


def run_one(data, setting, seed, steps):
    hidden, beta2 = SETTINGS[setting]
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        metrics = cli.run_training("maf", data, steps, 512, cli.LR, out, seed=seed,
                                   hidden=hidden, beta2=beta2, progress=False, threads=1)
    return data, setting, seed, metrics["kl"], metrics["kl_se"], metrics["train_seconds"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0 .. SEEDS-1 (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--data", nargs="*", default=["checkerboard", "8gaussians"],
                        choices=["checkerboard", "8gaussians"])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    jobs = [(d, s, seed) for d in args.data for s in SETTINGS for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_one, *zip(*jobs), [args.steps] * len(jobs)))

    print(f"maf(2), {args.steps} steps at batch 512, seeds 0-{args.seeds - 1}: KL(p || q) in "
          "nats, each run's standard error in brackets")
    for data in args.data:
        for setting in SETTINGS:
            rows = [r for r in results if r[:2] == (data, setting)]
            kl = np.array([r[3] for r in rows])
            print(f"\n{data}, {setting}")
            for i in range(0, len(rows), 4):
                print("  " + "  ".join(f"seed {r[2]}: {r[3]:.4f} ({r[4]:.4f})"
                                       for r in rows[i:i + 4]))
            se = kl.std(ddof=1) / np.sqrt(len(kl)) if len(kl) > 1 else float("nan")
            print(f"  mean over seeds {kl.mean():.4f} +- {se:.4f} (standard error over seeds); "
                  f"{int(np.sum(kl <= TARGET))} of {len(kl)} seeds <= {TARGET}; "
                  f"training {np.mean([r[5] for r in rows]):.1f} s per run on average")
    print(f"\nwall time: {time.perf_counter() - start:.1f} s with {args.workers} workers "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
