r"""What a spline coupling's training step costs over an affine one, measured in one run.

``train.fit`` (forward, backward, Adam; the library's own path) on 2-D checkerboard data at
batch 512 for ``nsf(2)`` and ``realnvp(2)`` at their defaults (8 couplings, 64x64 ReLU nets;
nsf with K = 8 bins on [-4, 4]), in float64 (what ``nflows-edu train`` uses) and float32.
The two models alternate, ``--rounds`` times, each round a fresh ``fit`` of ``--steps``
steps, so a change in the machine's load hits both; the table gives the median wall time per
step over the rounds, CPU time beside it, and their ratio.

Run:  python benchmarks/spline_step.py [--steps 200] [--rounds 5]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import nflows_edu  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nflows_edu import datasets, models, train  # noqa: E402

MODELS = ("realnvp", "nsf")


def time_fit(name, x, steps, dtype):
    """(wall seconds, CPU seconds) per step of ``train.fit`` on a fresh ``name``(2)."""
    flow = models.MODELS[name](2, rng=np.random.default_rng(0), dtype=dtype)
    wall, cpu = time.perf_counter(), time.process_time()
    train.fit(flow, x, steps=steps, batch_size=512, lr=3e-3, rng=np.random.default_rng(1),
              progress=False, threads=1)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    x = datasets.toy("checkerboard", 100_000, np.random.default_rng(0))
    print(f"train.fit, 2-D checkerboard, batch 512, one BLAS thread; median over {args.rounds} "
          f"rounds of {args.steps} steps, the models alternating")
    print(f"{'dtype':8s} {'model':8s} {'wall ms/step':>13s} {'CPU ms/step':>12s}")
    for dtype in (np.float64, np.float32):
        xd = x.astype(dtype)
        for name in MODELS:  # compile and warm up
            time_fit(name, xd, 10, dtype)
        times = {name: [] for name in MODELS}
        for _ in range(args.rounds):
            for name in MODELS:
                times[name].append(time_fit(name, xd, args.steps, dtype))
        median = {name: np.median(np.array(t), axis=0) for name, t in times.items()}
        for name in MODELS:
            print(f"{np.dtype(dtype).name:8s} {name:8s} {1e3 * median[name][0]:13.2f} "
                  f"{1e3 * median[name][1]:12.2f}")
        ratio = median["nsf"] / median["realnvp"]
        print(f"{np.dtype(dtype).name:8s} a spline step costs {ratio[0]:.2f}x an affine one "
              f"(wall; CPU {ratio[1]:.2f}x)")


if __name__ == "__main__":
    main()
