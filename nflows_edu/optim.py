r"""Optimizers over ``Module.parameters()``: they update each ``param`` in place from its
``grad`` and know nothing else about the model.

The updates use NumPy's ``out=`` arguments and one scratch array per parameter, so a step makes
no new arrays; for a model with millions of parameters that halves the memory traffic.
"""
import numpy as np


def clip_grad_norm(parameters, max_norm):
    r"""Scale all gradients by min(1, max_norm / ||g||), ||g|| the norm over all of them.

    Returns the norm before clipping (``inf`` or ``nan`` if a gradient is not finite).
    """
    total = float(np.sqrt(sum(float(np.vdot(g, g)) for _, _, g in parameters)))
    if max_norm is not None and np.isfinite(total) and total > max_norm:
        for _, _, g in parameters:
            g *= max_norm / total
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

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    p <- p - lr_t * m / (sqrt(v) + eps_t),
    lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t),  eps_t = eps * sqrt(1 - b2^t)
    (the bias corrections folded into two scalars; the same update as m_hat / (sqrt(v_hat) + eps)).
    """

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.parameters = list(parameters)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m = [np.zeros_like(p) for _, p, _ in self.parameters]
        self.v = [np.zeros_like(p) for _, p, _ in self.parameters]
        self.scratch = [np.empty_like(p) for _, p, _ in self.parameters]

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        correction2 = np.sqrt(1 - b2**self.t)
        lr_t = self.lr * correction2 / (1 - b1**self.t)
        eps_t = self.eps * correction2
        for (_, p, g), m, v, tmp in zip(self.parameters, self.m, self.v, self.scratch):
            np.subtract(g, m, out=tmp)          # m += (1 - b1) (g - m)
            tmp *= 1 - b1
            m += tmp
            np.multiply(g, g, out=tmp)          # v += (1 - b2) (g^2 - v)
            tmp -= v
            tmp *= 1 - b2
            v += tmp
            np.sqrt(v, out=tmp)                 # p -= lr_t * m / (sqrt(v) + eps_t)
            tmp += eps_t
            np.divide(m, tmp, out=tmp)
            tmp *= lr_t
            p -= tmp
