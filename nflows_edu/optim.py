r"""Optimizers over ``Module.parameters()``: they update each ``param`` in place from its
``grad`` and know nothing else about the model.

The updates use NumPy's ``out=`` arguments and preallocated scratch arrays, so a step makes no
new arrays; for a model with millions of parameters that halves the memory traffic.
"""
import math

import numpy as np


def clip_grad_norm(parameters, max_norm):
    r"""Scale all gradients by min(1, max_norm / ||g||), ||g|| the norm over all of them.

    Returns the norm before clipping (``inf`` or ``nan`` if a gradient is not finite).
    """
    total = float(np.sqrt(sum(float(np.vdot(g, g)) for _, _, g in parameters)))
    if max_norm is not None and np.isfinite(total) and total > max_norm:
        for _, _, g in parameters:
            g *= float(max_norm) / total  # a Python float keeps float32 gradients float32
    return total


class SGD:
    r"""Stochastic gradient descent with momentum.

    v <- momentum * v + g;   p <- p - lr * v
    """

    def __init__(self, parameters, lr=1e-2, momentum=0.9):
        self.parameters = list(parameters)
        self.lr, self.momentum = lr, momentum
        self.velocity = [np.zeros_like(p) for _, p, _ in self.parameters]

    def step(self):
        for (_, p, g), v in zip(self.parameters, self.velocity):
            v *= self.momentum
            v += g
            p -= self.lr * v


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


class Adam:
    r"""Adam (Kingma & Ba, 2014, arXiv:1412.6980).

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
