r"""Reverse KL, in nats, of planar, radial and IAF flows fitted to the energies U1-U4 of Rezende
and Mohamed (2015), with training times; writes a picture of the target and of every model's
density.

Each model is trained by ``train.fit_reverse_kl`` (Adam, batch 256, cosine decay, the inverse
temperature annealed from 0.01 to 1 over the first half of the steps as in the paper, one BLAS
thread) and then scored on fresh samples:

    KL(q || p) = E_q[log q(x) + U(x)] + log Z      (log Z from ``datasets.energy_log_z``)

Run:  python benchmarks/reverse_kl.py [--steps 10000] [--out reverse_kl_out] [--models ...]
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import nflows_edu  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from nflows_edu import datasets, models, train, viz  # noqa: E402

# name: (builder, learning rate)
CONFIGS = {
    "planar K=8": (lambda rng: models.planar(2, n_layers=8, rng=rng), 1e-2),
    "planar K=32": (lambda rng: models.planar(2, n_layers=32, rng=rng), 1e-2),
    "radial K=8": (lambda rng: models.radial(2, n_layers=8, rng=rng), 1e-2),
    "radial K=32": (lambda rng: models.radial(2, n_layers=32, rng=rng), 1e-2),
    "IAF 5x(64,64)": (lambda rng: models.iaf(2, n_layers=5, hidden=(64, 64), rng=rng), 3e-3),
}


def fit_one(config, energy, steps, seed, n_eval, anneal):
    build, lr = CONFIGS[config]
    rng = np.random.default_rng(seed)
    flow = build(rng)
    log_target, grad_log_target = datasets.energy_target(energy)
    start = time.process_time()  # CPU seconds: the machine may be shared
    train.fit_reverse_kl(flow, log_target, grad_log_target, steps=steps, batch_size=256, lr=lr,
                         rng=rng, anneal_steps=anneal, progress=False)
    seconds = time.process_time() - start
    kl, se = train.reverse_kl(flow, log_target, datasets.energy_log_z(energy), n=n_eval, rng=rng)
    return flow, kl, se, seconds


def target_panel(ax, energy, lim=4.0, n=200):
    axis = np.linspace(-lim, lim, n)
    X, Y = np.meshgrid(axis, axis)
    U = datasets.energy(energy, np.column_stack([X.ravel(), Y.ravel()])).reshape(X.shape)
    ax.imshow(np.exp(-U), origin="lower", extent=(-lim, lim, -lim, lim), cmap=viz.DENSITY_CMAP,
              interpolation="bilinear")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"{energy}: exp(-U)", fontsize="small")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=100_000)
    parser.add_argument("--anneal", type=int, default=None,
                        help="steps over which beta rises from 0.01 to 1 (default steps / 2; "
                        "0: no annealing)")
    parser.add_argument("--out", default="reverse_kl_out")
    parser.add_argument("--models", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--energies", nargs="*", default=list(datasets.ENERGY_NAMES),
                        choices=list(datasets.ENERGY_NAMES))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    anneal = args.steps // 2 if args.anneal is None else args.anneal
    print(f"reverse KL in nats (+- one standard error, {args.n_eval} samples), after "
          f"{args.steps} steps of batch 256 (beta annealed over {anneal}); training time in "
          "CPU seconds, 1 BLAS thread")
    print("| model | " + " | ".join(args.energies) + " |")
    print("|---|" + "---|" * len(args.energies))
    fig, axes = plt.subplots(len(args.energies), 1 + len(args.models),
                             figsize=(2.2 * (1 + len(args.models)), 2.2 * len(args.energies)),
                             squeeze=False)
    for i, energy in enumerate(args.energies):
        target_panel(axes[i, 0], energy)
    with threadpool_limits(1):
        for j, config in enumerate(args.models):
            cells = []
            for i, energy in enumerate(args.energies):
                flow, kl, se, seconds = fit_one(config, energy, args.steps, args.seed,
                                                args.n_eval, anneal)
                cells.append(f"{kl:.3f} +- {se:.3f} ({seconds:.0f} s)")
                viz.plot_density(flow, ax=axes[i, j + 1], n=150,
                                 title=f"{config}: KL {kl:.3f}")
                axes[i, j + 1].title.set_fontsize("small")
            print(f"| {config} | " + " | ".join(cells) + " |", flush=True)
    path = os.path.join(args.out, "reverse_kl.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
