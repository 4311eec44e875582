r"""Time one RealNVP training step (forward, backward, Adam) in float32: the textbook code
(``optim.Adam``) next to the fast path ``train.fit`` uses (``fast.FusedAdam`` and
``fast.keep_freed_memory``), in one run.

Two cases from the issue:

* dim 2,  hidden (64, 64),   8 couplings, batch 512  -- target: under 1.5 ms per step
* dim 64, hidden (512, 512), 8 couplings, batch 256  -- target: at least 60% of the GFLOP/s of a
  1024 x 1024 float32 matrix product measured in the same run

(for comparison: a PyTorch library needed 3.5 ms and 31 ms for these two on a 2-core CPU).

FLOPs count only the matrix products, 2 * m * n * k each: for every ``Linear`` of every coupling
net, ``x @ W`` in forward and ``x^T @ dy`` (dW) and ``dy @ W^T`` (dx) in backward. The dx of
the first ``Linear`` is counted too, because the code computes it (a coupling needs ``dx_a``).
Elementwise work (ReLU, tanh, exp, Adam) is not counted, so the GFLOP/s are a lower bound.

Both run with the BLAS threads ``train.fit`` would choose (``threads.blas_threads("auto")``:
one thread for these sizes); the matmul reference is measured at the same thread count.

Run:  python benchmarks/coupling_step.py [--repeats 50]
"""
import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

try:
    import nflows_edu  # noqa: F401  (an installed copy, or one on PYTHONPATH)
except ImportError:    # run from a checkout: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nflows_edu import fast, gradcheck, models, optim, threads  # noqa: E402
from nflows_edu.nn import Linear  # noqa: E402

CASES = [
    # name, dim, hidden, batch, target kind, target value
    ("dim 2",  2,  (64, 64),   512, "ms", 1.5),
    ("dim 64", 64, (512, 512), 256, "pct", 60.0),
]
N_LAYERS = 8


def timed(fn, repeats, warmup):
    """(median, best) wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    times = timed_all(fn, repeats, warmup)
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


def make_step(dim, hidden, batch, optimizer):
    rng = np.random.default_rng(0)
    flow = models.realnvp(dim, n_layers=N_LAYERS, hidden=hidden, dtype=np.float32, rng=rng)
    # The nets start at zero (identity flow); move them off it so the step does real work.
    gradcheck.randomize_parameters(flow, rng, 0.05)
    opt = optimizer(list(flow.parameters()), lr=1e-4)
    x = rng.standard_normal((batch, dim)).astype(np.float32)

    def step():
        flow.loss_and_grad(x)
        opt.step()

    return flow, step


def time_variants(case, repeats, rounds=5):
    """Median step time of the textbook and the fused Adam, interleaved in ``rounds`` so
    that both see the same machine load."""
    _, dim, hidden, batch = case[:4]
    flow, textbook = make_step(dim, hidden, batch, optim.Adam)
    _, fused = make_step(dim, hidden, batch, fast.FusedAdam)
    times = {"textbook": [], "fast": []}
    per_round = max(5, repeats // rounds)
    faults = 0
    for _ in range(rounds):
        for name, step in (("textbook", textbook), ("fast", fused)):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times[name] += timed_all(step, per_round, warmup=2)
            if name == "fast":
                faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    flops, how = step_flops(flow, batch)
    times = {k: float(np.median(v)) for k, v in times.items()}
    return times, faults / (rounds * (per_round + 2)), flops, how


def timed_all(fn, repeats, warmup):
    """Every one of ``repeats`` wall times of ``fn()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed steps per case")
    args = parser.parse_args(argv)

    print(threads.blas_info())
    print(f"python {platform.python_version()}, {platform.machine()}")
    print(f"realnvp, {N_LAYERS} layers, float32, one step = loss_and_grad + Adam; median of "
          f"{args.repeats} steps per variant, interleaved\n")
    header = (f"{'case':8s} {'malloc':>7s} {'faults':>7s} {'textbook ms':>12s} {'fast ms':>8s} "
              f"{'ratio':>6s} "
              f"{'fast GFLOP/s':>13s} {'% matmul':>9s} {'target':>10s}  result")
    print(header)
    print("-" * len(header))
    measured = []
    for phase in ("default", "kept"):
        if phase == "kept":  # process-wide and irreversible: measured second
            fast.keep_freed_memory()
        for case in CASES:
            flow, _ = make_step(*case[1:4], optim.Adam)
            with threads.blas_threads("auto", flow, case[3]) as n_threads:
                measured.append((phase, case, n_threads) + time_variants(case, args.repeats))
    # The matmul reference last: freeing its 4 MiB arrays would raise malloc's threshold too
    rates = {}
    for n in dict.fromkeys(m[2] for m in measured):
        with threads.blas_threads(n):
            rates[n] = matmul_rate(max(10, args.repeats // 2))
    all_pass, hows = True, []
    for phase, case, n_threads, times, faults, flops, how in measured:
        name, dim, hidden, batch, kind, target = case
        rate = rates[n_threads]
        gflops = flops / times["fast"] / 1e9
        pct = 100 * gflops / rate
        if kind == "ms":
            ok, target_text = times["fast"] * 1e3 < target, f"< {target} ms"
        else:
            ok, target_text = pct >= target, f">= {target:.0f}%"
        if phase == "kept":
            all_pass &= ok
            hows.append(f"{name}: hidden {hidden}, batch {batch}, BLAS threads "
                        f"{n_threads or 'default'}, matmul {rate:.1f} GFLOP/s; {how}")
        print(f"{name:8s} {phase:>7s} {faults:7.0f} {times['textbook'] * 1e3:12.3f} "
              f"{times['fast'] * 1e3:8.3f} {times['textbook'] / times['fast']:6.2f} "
              f"{gflops:13.1f} {pct:8.1f}% {target_text:>10s}  {'PASS' if ok else 'MISS'}")
    print()
    print("textbook: optim.Adam; fast: fast.FusedAdam (what train.fit uses); ratio = textbook / "
          "fast;\nfaults: minor page faults per step; malloc 'kept': after "
          "fast.keep_freed_memory()\n(what train.fit runs with); the targets apply to that row")
    for line in hows:
        print(line)
    return all_pass


if __name__ == "__main__":
    main()
