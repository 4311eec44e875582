r"""Time one Glow training step on the 8x8 digits in float32, and the share of it spent in
matrix products beside the GFLOP/s of a 1024 x 1024 matrix product, in one run.

The step is what ``train.fit`` does for each batch: ``flow.loss_and_grad(x)`` on a batch of 64
dequantised digits, then ``fast.FusedAdam``'s update, for ``models.glow((1, 8, 8),
pixel_levels=17)`` with its defaults (2 levels, depth 8, hidden 64), ActNorm initialised from
data (``flow.data_init`` on 512 rows, as ``train.fit``), after ``fast.keep_freed_memory()``
(as ``train.fit``), on one BLAS thread (``--threads``). Target (issue 7): the matrix products
are at least half of the step. Anchor: a PyTorch Glow of that size took 0.22 s per step on a
2-core CPU.

How it is measured
------------------
1. Step time: the median of ``--repeats`` steps; from the same steps, the medians of the time
   in the Adam update and, by a timer put around ``nn.conv.im2col``, in the patch copies (the
   timer costs about a microsecond per call).
2. Recording: for ``--record`` more steps, ``nflows_edu.nn.conv.matmul`` (the one name every
   ``Conv2d`` product is called through) and the 1x1 convolution's two helpers
   ``bijectors.glow._mix`` and ``_outer_sum`` are replaced by recorders that keep the operands
   of every product (the arrays themselves: their shapes, dtypes and memory layouts, so a
   transposed view is replayed as a transposed view). For the two glow helpers the recorder
   rebuilds their operands the way the helper does (a reshape, a transpose), since they use
   ``@`` inline.
3. Isolation: the products of one recorded step are run again back to back on those operands;
   the median over ``--rounds`` of their total is "the matrix products of one step". FLOPs are
   2 m k n per product (times the batch of a batched product); GFLOP/s = FLOPs / that time.
4. Reference: a 1024 x 1024 float32 product, best of 10, at the same thread count.

Every time is CPU time of the process (``time.process_time``) by default: with one BLAS thread
all the work runs on the calling thread, and the time during which other programs hold the
core is not counted, so the numbers hold on a shared machine (its caches are still shared).
``--clock wall`` times elapsed time instead (the default with ``--threads`` above 1, where
CPU time would add up the threads).

Limits: the replay runs the products outside the step, so their operands may sit in other
levels of the cache than in the step (there each product follows the code that wrote its
operands; here it follows the previous product): the share is an estimate of the products'
part of the step, not a measurement inside it, and it moves by several points between runs.
Left out: the C x C products (C = 4, 8) that build the LU 1x1 convolution's weight and its
gradient (a few microseconds each, mostly Python) and the Adam update (reported on its own
line). "Other" is what remains of the median step: a difference of medians, so it is rough.
The machine may be shared: compare the numbers of one run with each other, not across runs.

Measured on the 2-core development machine (shared with other jobs), CPU time, 3 runs: before
this benchmark's changes to ``nn.Conv2d`` and ``fast.keep_freed_memory``, 108-127 ms per step
with the products 15-18% of it; after, 37-39 ms with the products 56-67% of it.

Run:  python benchmarks/glow_step.py [--repeats 30] [--profile STEPS]
"""
import argparse
import cProfile
import platform
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

try:
    import nflows_edu  # noqa: F401  (an installed copy, or one on PYTHONPATH)
except ImportError:    # run from a checkout: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_limits  # noqa: E402

from nflows_edu import datasets, fast, models, nn, threads  # noqa: E402
from nflows_edu.bijectors import dequantize, glow as glow_module  # noqa: E402

# CPU time of the process (with one BLAS thread all the work is on the calling thread, and
# the time other programs hold the core does not count); set to time.perf_counter by --clock
clock = time.process_time

BATCH = 64
LEVELS = 17  # grey levels of the digits
ANCHOR_S = 0.22  # PyTorch, same model, 2-core CPU


def make_step(seed=0):
    """The flow, its optimizer and ``step()``, which trains on the next batch of a fixed
    cycle of 16 batches."""
    rng = np.random.default_rng(seed)
    flow = models.glow((1, 8, 8), pixel_levels=LEVELS, rng=rng, dtype=np.float32)
    data = dequantize(datasets.digits("train"), rng, LEVELS).astype(np.float32)
    flow.data_init(data[rng.choice(len(data), 512, replace=False)])
    opt = fast.FusedAdam(list(flow.parameters()), lr=1e-3)
    batches = [data[rng.choice(len(data), BATCH, replace=False)] for _ in range(16)]
    state = {"i": 0}

    def step():
        """One training step; returns (seconds in loss_and_grad, seconds in the update)."""
        x = batches[state["i"] % len(batches)]
        state["i"] += 1
        t0 = clock()
        flow.loss_and_grad(x)
        t1 = clock()
        opt.step()
        return t1 - t0, clock() - t1

    return flow, step


class Patches:
    """Swaps module-level helpers for wrappers while active (``with patches: ...``) and
    restores them on exit. ``Patches(record=True)`` records the operands of every product in
    ``products``; ``Patches(record=False)`` only times ``im2col`` into
    ``copy_time``."""

    def __init__(self, record):
        self.record = record
        self.products = []                   # (a, b, origin) since the last new_step()
        self.copy_time = defaultdict(float)  # seconds in im2col since new_step()
        self._saved = []

    def new_step(self):
        self.products = []
        self.copy_time = defaultdict(float)

    def _patch(self, module, name, wrapper):
        self._saved.append((module, name, getattr(module, name)))
        setattr(module, name, wrapper(getattr(module, name)))

    def __enter__(self):
        def record_matmul(original):
            def matmul(a, b):
                self.products.append((a, b, "Conv2d"))
                return original(a, b)
            return matmul

        def record_mix(original):
            def _mix(W, x):
                n, c, h, w = x.shape
                self.products.append((W, x.reshape(n, c, h * w), "1x1 conv"))
                return original(W, x)
            return _mix

        def record_outer_sum(original):
            def _outer_sum(a, b):
                c = a.shape[1]
                self.products.append((a.transpose(1, 0, 2, 3).reshape(c, -1),
                                      b.transpose(1, 0, 2, 3).reshape(c, -1).T, "1x1 conv"))
                return original(a, b)
            return _outer_sum

        def timer(name):
            def wrap(original):
                def timed(*args, **kwargs):
                    t0 = clock()
                    out = original(*args, **kwargs)
                    self.copy_time[name] += clock() - t0
                    return out
                return timed
            return wrap

        if self.record:
            self._patch(nn.conv, "matmul", record_matmul)
            self._patch(glow_module, "_mix", record_mix)
            self._patch(glow_module, "_outer_sum", record_outer_sum)
        else:
            self._patch(nn.conv, "im2col", timer("im2col"))
        return self

    def __exit__(self, *exc):
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved = []


def flops(a, b):
    """2 m k n for ``a @ b`` with a (..., m, k), b (..., k, n), times the batch size."""
    batch = np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), dtype=np.int64)
    return 2 * int(batch) * a.shape[-2] * a.shape[-1] * b.shape[-1]


def layout(a):
    """'C' (row-major), 'T' (a transposed row-major array) or 'S' (other strides)."""
    if a.flags.c_contiguous:
        return "C"
    return "T" if a.ndim == 2 and a.T.flags.c_contiguous else "S"


def replay(products, rounds):
    """Median total seconds of the products run back to back, and each product's median."""
    totals, each = [], np.zeros((rounds, len(products)))
    for a, b, _ in products:  # warm up
        a @ b
    for r in range(rounds):
        t_start = clock()
        for i, (a, b, _) in enumerate(products):
            t0 = clock()
            a @ b
            each[r, i] = clock() - t0
        totals.append(clock() - t_start)
    return float(np.median(totals)), np.median(each, axis=0)


def matmul_rate(repeats=10):
    """GFLOP/s of a 1024 x 1024 float32 matrix product (best of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 1024)).astype(np.float32)
    out = np.empty((1024, 1024), dtype=np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = clock()
        np.matmul(a, b, out=out)
        times.append(clock() - t0)
    return 2 * 1024**3 / min(times) / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--record", type=int, default=5, help="steps with the recorders on")
    parser.add_argument("--rounds", type=int, default=20, help="replays of the products")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="cpu: process CPU time (default with one thread); wall: elapsed "
                             "time (default with more threads)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also run cProfile on STEPS steps and print the top entries")
    args = parser.parse_args(argv)
    global clock
    if args.clock is None:
        args.clock = "cpu" if args.threads == 1 else "wall"
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    print(threads.blas_info())
    print(f"python {platform.python_version()}, {platform.machine()}")
    print(f"glow((1, 8, 8), levels 2, depth 8, hidden 64, pixel_levels {LEVELS}), float32, "
          f"batch {BATCH}; one step = loss_and_grad + FusedAdam; {args.threads} BLAS "
          f"thread(s); {args.clock} time\n")
    fast.keep_freed_memory()
    with threadpool_limits(args.threads):
        flow, step = make_step()
        for _ in range(args.warmup):
            step()
        timers = Patches(record=False)
        times, copies = [], defaultdict(list)
        with timers:
            for _ in range(args.repeats):
                timers.new_step()
                times.append(step())
                for name, seconds in timers.copy_time.items():
                    copies[name].append(seconds)
        times = np.array(times)
        step_s = float(np.median(times.sum(axis=1)))
        adam_s = float(np.median(times[:, 1]))
        copy_s = {name: float(np.median(v)) for name, v in copies.items()}

        recorder = Patches(record=True)
        with recorder:
            for _ in range(args.record):
                recorder.new_step()
                step()
        products = recorder.products
        mm_s, each = replay(products, args.rounds)
        reference = matmul_rate()

        if args.profile:
            profiler = cProfile.Profile(clock)
            profiler.enable()
            for _ in range(args.profile):
                step()
            profiler.disable()

    total_flops = sum(flops(a, b) for a, b, _ in products)
    rate = total_flops / mm_s / 1e9
    share = mm_s / step_s
    print(f"step (median of {args.repeats}):        {1e3 * step_s:8.2f} ms   "
          f"(PyTorch anchor {1e3 * ANCHOR_S:.0f} ms wall on 2 cores: ratio "
          f"{step_s / ANCHOR_S:.2f})")
    print(f"matrix products of one step:     {1e3 * mm_s:8.2f} ms   {100 * share:5.1f}% of "
          f"the step   (target >= 50%: {'PASS' if share >= 0.5 else 'MISS'})")
    print(f"  {len(products)} products, {total_flops / 1e9:.3f} GFLOP: {rate:6.1f} GFLOP/s "
          f"= {100 * rate / reference:.1f}% of a 1024 x 1024 float32 product "
          f"({reference:.1f} GFLOP/s, same run)")
    print("rest of the step:")
    rest = step_s - mm_s - adam_s - sum(copy_s.values())
    for name, seconds in sorted(copy_s.items()) + [("Adam update", adam_s)]:
        print(f"  {name:30s} {1e3 * seconds:8.2f} ms   {100 * seconds / step_s:5.1f}%")
    print(f"  {'other (transposes, padding,':30s} {1e3 * rest:8.2f} ms   "
          f"{100 * rest / step_s:5.1f}%\n  {' elementwise, Python)':30s}")

    groups = defaultdict(lambda: [0, 0.0, 0])
    for (a, b, origin), seconds in zip(products, each):
        key = (origin, a.shape, layout(a), b.shape, layout(b))
        groups[key][0] += 1
        groups[key][1] += seconds
        groups[key][2] += flops(a, b)
    print("\nproducts by shape (C: row-major, T: transposed view, S: other strides), by time:")
    print(f"  {'origin':9s} {'a':>16s} {'b':>16s} {'count':>5s} {'ms/step':>8s} "
          f"{'GFLOP/s':>8s}")
    for (origin, sa, la, sb, lb), (count, seconds, fl) in sorted(
            groups.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"  {origin:9s} {str(sa) + la:>16s} {str(sb) + lb:>16s} {count:5d} "
              f"{1e3 * seconds:8.3f} {fl / seconds / 1e9:8.1f}")

    if args.profile:
        print(f"\ncProfile, {args.profile} steps, by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return share >= 0.5


if __name__ == "__main__":
    main()
