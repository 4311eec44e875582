r"""Optimizers over ``Module.parameters()``: they update each ``param`` in place from its
``grad`` and know nothing else about the model.

These are the textbook updates. ``nflows_edu.fast.FusedAdam`` computes the same Adam update
faster (it is what ``train.fit`` uses); the tests check that the two agree to round-off.
"""
import math

import numpy as np


def clip_grad_norm(parameters, max_norm):
    r"""Scale all gradients by min(1, max_norm / ||g||), ||g|| the norm over all of them.

    Returns the norm before clipping (``inf`` or ``nan`` if a gradient is not finite).
    """
    total = math.sqrt(sum(float(np.vdot(g, g)) for _, _, g in parameters))
    if max_norm is not None and math.isfinite(total) and total > max_norm:
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


class Adam:
    r"""Adam (Kingma & Ba, 2014, arXiv:1412.6980).

    m <- b1 m + (1 - b1) g;       v <- b2 v + (1 - b2) g^2
    m_hat = m / (1 - b1^t);       v_hat = v / (1 - b2^t)
    p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    ``m[i]`` and ``v[i]`` are the moments of parameter ``i``, shaped like it.
    """

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.parameters = list(parameters)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m = [np.zeros_like(p) for _, p, _ in self.parameters]
        self.v = [np.zeros_like(p) for _, p, _ in self.parameters]

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for (_, p, g), m, v in zip(self.parameters, self.m, self.v):
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g**2
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            p -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype, copy=False)
