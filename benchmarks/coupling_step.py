r"""Time one RealNVP training step (forward, backward, Adam) in float32.

Two cases from the issue:

* dim 2,  hidden (64, 64),   8 couplings, batch 512  -- target: under 1.5 ms per step
* dim 64, hidden (512, 512), 8 couplings, batch 256  -- target: at least 60% of the GFLOP/s of a
  1024 x 1024 float32 matrix product measured in the same run

(for comparison: a PyTorch library needed 3.5 ms and 31 ms for these two on a 2-core CPU).

FLOPs count only the matrix products, 2 * m * n * k each: for every ``Linear`` of every coupling
net, ``x @ W`` in forward and ``x^T @ dy`` (dW) and ``dy @ W^T`` (dx) in backward. The dx of
the first ``Linear`` is counted too, because the code computes it (a coupling needs ``dx_a``).
Elementwise work (ReLU, tanh, exp, Adam) is not counted, so the GFLOP/s are a lower bound.

Run:  python benchmarks/coupling_step.py [--repeats 50]
"""
import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

try:
    import nflows_edu  # noqa: F401  (an installed copy, or one on PYTHONPATH)
except ImportError:    # run from a checkout: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nflows_edu import gradcheck, models, optim  # noqa: E402
from nflows_edu.nn import Linear  # noqa: E402

CASES = [
    # name, dim, hidden, batch, target kind, target value
    ("dim 2",  2,  (64, 64),   512, "ms", 1.5),
    ("dim 64", 64, (512, 512), 256, "pct", 60.0),
]
N_LAYERS = 8


def blas_info():
    """numpy version and the name/version of the BLAS it was built against."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception as err:  # older numpy without mode="dicts"
        name = f"unknown ({err})"
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    return f"numpy {np.__version__}, BLAS {name}, {os.cpu_count()} CPUs, env {env}"


def timed(fn, repeats, warmup):
    """(median, best) wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def matmul_rate(repeats):
    """GFLOP/s of a 1024 x 1024 float32 matrix product (best of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 1024)).astype(np.float32)
    out = np.empty((1024, 1024), dtype=np.float32)
    _, best = timed(lambda: np.matmul(a, b, out=out), repeats, warmup=3)
    return 2 * 1024**3 / best / 1e9


def linears(module):
    """Every ``Linear`` in the module tree."""
    if isinstance(module, Linear):
        yield module
    for _, child in module.children():
        yield from linears(child)


def step_flops(flow, batch):
    """Matrix-product FLOPs of one forward + backward: 3 products of 2*N*I*O per Linear.

    Returns the total and a line saying how it was counted.
    """
    shapes = [(lin.n_in, lin.n_out) for lin in linears(flow)]
    total = sum(3 * 2 * batch * n_in * n_out for n_in, n_out in shapes)
    per_net = len(shapes) // N_LAYERS
    text = (f"{N_LAYERS} couplings x Linear " + ", ".join(f"{i}x{o}" for i, o in shapes[:per_net])
            + f"; 3 products (x@W, x^T@dy, dy@W^T) of 2*{batch}*I*O each = {total:,} FLOP")
    return total, text


def time_case(dim, hidden, batch, repeats):
    rng = np.random.default_rng(0)
    flow = models.realnvp(dim, n_layers=N_LAYERS, hidden=hidden, dtype=np.float32, rng=rng)
    # The nets start at zero (identity flow); move them off it so the step does real work.
    gradcheck.randomize_parameters(flow, rng, 0.05)
    opt = optim.Adam(list(flow.parameters()), lr=1e-4)
    x = rng.standard_normal((batch, dim)).astype(np.float32)

    def step():
        flow.loss_and_grad(x)
        opt.step()

    median, best = timed(step, repeats, warmup=max(5, repeats // 10))
    return (median, best) + step_flops(flow, batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed steps per case")
    args = parser.parse_args(argv)

    print(blas_info())
    print(f"python {platform.python_version()}, {platform.machine()}")
    n_mm = max(10, args.repeats // 2)
    rate_before = matmul_rate(n_mm)
    results = [(case, time_case(*case[1:4], args.repeats)) for case in CASES]
    rate_after = matmul_rate(n_mm)
    # the better of two measurements, so a busy moment does not flatter the flow's steps
    rate = max(rate_before, rate_after)
    print(f"1024x1024 float32 matmul: {rate:.1f} GFLOP/s (best of {n_mm}, measured before and "
          f"after the steps: {rate_before:.1f}, {rate_after:.1f})")
    print(f"realnvp, {N_LAYERS} layers, float32, one step = loss_and_grad + Adam; "
          f"median of {args.repeats} (best in parentheses)\n")

    header = (f"{'case':8s} {'ms/step':>16s} {'GFLOP/step':>11s} {'GFLOP/s':>8s} "
              f"{'% matmul':>9s} {'target':>12s}  result")
    print(header)
    print("-" * len(header))
    all_pass = True
    for (name, dim, hidden, batch, kind, target), (median, best, flops, _) in results:
        gflops = flops / median / 1e9
        pct = 100 * gflops / rate
        if kind == "ms":
            ok, target_text = median * 1e3 < target, f"< {target} ms"
        else:
            ok, target_text = pct >= target, f">= {target:.0f}%"
        all_pass &= ok
        ms = f"{median * 1e3:.3f} ({best * 1e3:.3f})"
        print(f"{name:8s} {ms:>16s} {flops / 1e9:11.4f} {gflops:8.1f} {pct:8.1f}% "
              f"{target_text:>12s}  {'PASS' if ok else 'MISS'}")
    print()
    for (name, _, hidden, batch, _, _), (_, _, _, how) in results:
        print(f"{name}: hidden {hidden}, batch {batch}; {how}")
    return all_pass


if __name__ == "__main__":
    main()
