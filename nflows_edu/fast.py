r"""Fast paths: the same computations as the textbook code, rearranged for speed.

Nothing here is needed to understand a flow; read ``optim.Adam`` rather than ``FusedAdam``.
Each piece says what it buys, measured by ``benchmarks/coupling_step.py`` (which prints the
textbook and the fast variant side by side in one run), and the tests check that it computes
what the textbook code computes.
"""
import math

import numpy as np


def keep_freed_memory(nbytes=31 << 20):
    r"""Stop glibc's malloc from handing the memory of every training step back to the OS.

    A step allocates its caches (megabytes) in forward and frees them in backward. glibc returns
    free memory at the top of its heap to the OS once more than twice its mmap threshold
    (128 KiB at start) is free, so the next step page-faults it all back in. When glibc frees a
    block it had mmapped, it raises that threshold to the block's size for the rest of the
    process: one 31 MiB array, allocated and freed here (never touched: two system calls), sets
    it to 31 MiB, so up to 62 MiB of freed memory stays in the process. (glibc raises the
    threshold only for blocks of at most 32 MiB, its DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, so
    31 MiB is about the most this can keep.) Other allocators ignore this. ``train.fit`` calls it
    once (it changes the process, so it is not done at import).

    Measured (``benchmarks/coupling_step.py``, float32 RealNVP steps, 2 cores): page faults per
    step 869 -> 0 at D = 2 and 4,712 -> 0 at D = 64; system time per step 2.3 ms -> 0.04 ms and
    12.3 ms -> 0.04 ms; CPU time per step 7.8 -> 5.1 ms and 75 -> 56 ms (a loaded machine).
    A Glow step on the digits (``benchmarks/glow_step.py``) frees about 38 MB: with 16 MiB it
    page-faulted 9,200 times per step, with 31 MiB twice.
    """
    np.empty(nbytes, dtype=np.uint8)


def _adam_moments_and_step(g, m, v, step, b1, b2, lr_t, eps_t):
    """Update the moments ``m``, ``v`` from ``g`` in place; write the step into ``step``.

    Arrays of the same shape; ``step`` is scratch. Each line is one pass over the arrays, with
    ``out=`` / in-place operators so that no new array is made.
    """
    np.subtract(g, m, out=step)         # m += (1 - b1) (g - m)
    step *= 1 - b1
    m += step
    np.multiply(g, g, out=step)         # v += (1 - b2) (g^2 - v)
    step -= v
    step *= 1 - b2
    v += step
    np.sqrt(v, out=step)                # step = lr_t * m / (sqrt(v) + eps_t)
    step += eps_t
    np.divide(m, step, out=step)
    step *= lr_t


class _Gathered:
    """Small parameters of one dtype, updated as one flat vector.

    ``m``, ``v``, ``g`` (the gradients, copied in every step) and ``step`` hold the parameters
    back to back, in order; ``steps[i]`` is the part of ``step`` shaped like ``params[i]``.
    """

    def __init__(self, params, grads):
        self.params, self.grads = params, grads
        self.m = np.zeros(sum(p.size for p in params), dtype=params[0].dtype)
        self.v = np.zeros_like(self.m)
        self.g = np.empty_like(self.m)
        self.step = np.empty_like(self.m)
        self.steps = self.views(self.step)

    def views(self, flat):
        """``flat`` cut into views shaped like the parameters."""
        ends = np.cumsum([p.size for p in self.params])
        return [flat[end - p.size:end].reshape(p.shape) for p, end in zip(self.params, ends)]


class FusedAdam:
    r"""``optim.Adam``'s update, fused: the same numbers with fewer passes over memory.

    Measured on the optimizer step alone, float32 RealNVP with 8 couplings: 0.79 -> 0.083 ms
    (9.5x) at D = 2 (35,344 parameters in 48 arrays) and 46 -> 8.4 ms (5.5x) at D = 64
    (2.5 million parameters); ``benchmarks/coupling_step.py`` prints it again.

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    p <- p - lr_t * m / (sqrt(v) + eps_t),
    lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t),  eps_t = eps * sqrt(1 - b2^t)
    (the bias corrections folded into two scalars; the same update as m_hat / (sqrt(v_hat) + eps)).

    ``m[i]`` and ``v[i]`` are the moments of parameter ``i``, shaped like it.

    The update of some entries is a dozen NumPy calls, each a pass over them
    (``_adam_moments_and_step``). To keep that fast:

    * a parameter of at least ``block_bytes`` is updated in place one block of that size at a
      time, so the dozen passes run in the CPU's L2 cache and its ``p``, ``g``, ``m``, ``v``
      come from memory once per step;
    * the smaller ones are gathered into one flat vector per dtype, updated together, and
      scattered back: a RealNVP on 2-D data has dozens of small arrays, and a dozen calls
      *per array* would cost more than the arithmetic.
    """

    block_bytes = 256 * 1024

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.parameters = list(parameters)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m, self.v = [None] * len(self.parameters), [None] * len(self.parameters)
        self.large = []   # (p, g, m, v) as flat views, for the block-by-block update
        small = []        # indices of the parameters to gather
        for i, (_, p, g) in enumerate(self.parameters):
            p_flat, g_flat = p.reshape(-1), g.reshape(-1)
            in_place = np.shares_memory(p_flat, p) and np.shares_memory(g_flat, g)
            if p.nbytes >= self.block_bytes and in_place:
                self.m[i], self.v[i] = np.zeros_like(p), np.zeros_like(p)
                self.large.append((p_flat, g_flat, self.m[i].reshape(-1), self.v[i].reshape(-1)))
            else:
                small.append(i)
        self.scratch = {p.dtype: np.empty(self.block_bytes // p.itemsize, dtype=p.dtype)
                        for p, _, _, _ in self.large}
        self.gathered = []
        for dtype in dict.fromkeys(self.parameters[i][1].dtype for i in small):
            which = [i for i in small if self.parameters[i][1].dtype == dtype]
            group = _Gathered([self.parameters[i][1] for i in which],
                              [self.parameters[i][2] for i in which])
            self.gathered.append(group)
            for i, m, v in zip(which, group.views(group.m), group.views(group.v)):
                self.m[i], self.v[i] = m, v

    def step(self):
        self.t += 1
        # Python floats, not NumPy float64 scalars: with those, NumPy 2 would do the float32
        # updates in float64 and cast back, several times slower.
        b1, b2 = float(self.betas[0]), float(self.betas[1])
        correction2 = math.sqrt(1 - b2**self.t)
        lr_t = float(self.lr) * correction2 / (1 - b1**self.t)
        eps_t = float(self.eps) * correction2
        for p, g, m, v in self.large:
            scratch = self.scratch[p.dtype]
            for start in range(0, p.size, scratch.size):
                part = slice(start, start + scratch.size)
                step = scratch[:p[part].size]
                _adam_moments_and_step(g[part], m[part], v[part], step, b1, b2, lr_t, eps_t)
                p[part] -= step
        for group in self.gathered:
            np.concatenate([grad.ravel() for grad in group.grads], out=group.g)
            _adam_moments_and_step(group.g, group.m, group.v, group.step, b1, b2, lr_t, eps_t)
            for p, step in zip(group.params, group.steps):
                p -= step
