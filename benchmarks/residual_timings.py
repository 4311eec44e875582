"""Per-direction timings and iteration counts of the residual and implicit flows at D = 16, 64.

Untrained models (default initialisation, spectral norms converged), 4 blocks, hidden (128,),
a batch of 256 standard-normal points; one BLAS thread. Prints, per model and log-det mode:
forward (x -> z with the log-det: inference and density), inverse (z -> x: sampling; the
iterations of the fixed point / root finder per block), and one training step (forward,
log-det gradient, backward: ``flow.loss_and_grad``). Median of ``REPEATS`` (3) runs, in ms.

    OPENBLAS_NUM_THREADS=1 python benchmarks/residual_timings.py
"""
import time

import numpy as np
from threadpoolctl import threadpool_limits

from nflows_edu import models

REPEATS = 3
N = 256


def median_ms(f):
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def iterations(caches):
    """Iteration counts per block from a Chain's inverse caches (ImplicitBlock: g_x's solve)."""
    out = []
    for cache in caches:
        if isinstance(cache, tuple):  # ImplicitBlock: (cache_x, cache_z); inverse solves for x
            cache = cache[0]
        out.append(cache["iterations"])
    return out


def main():
    configs = [("iresnet", dict(logdet="exact")), ("iresnet", dict(logdet="series")),
               ("resflow", dict(logdet="roulette")), ("impflow", dict(logdet="exact")),
               ("impflow", dict(logdet="roulette"))]
    print(f"{'D':>3s} {'model':8s} {'logdet':9s} {'forward':>9s} {'inverse':>9s} "
          f"{'train step':>10s}  inverse iterations per block")
    for dim in (16, 64):
        for name, kw in configs:
            rng = np.random.default_rng(0)
            flow = models.MODELS[name](dim, n_blocks=4, hidden=(128,), rng=rng, **kw)
            x = rng.standard_normal((N, dim))
            z = flow.bijector.forward(x)[0]
            t_fwd = median_ms(lambda: flow.bijector.forward(x))
            t_inv = median_ms(lambda: flow.bijector.inverse(z))
            t_step = median_ms(lambda: flow.loss_and_grad(x))
            its = iterations(flow.bijector.inverse(z)[2])
            print(f"{dim:3d} {name:8s} {kw['logdet']:9s} {t_fwd:9.1f} {t_inv:9.1f} "
                  f"{t_step:10.1f}  {its}", flush=True)


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
