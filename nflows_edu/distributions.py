r"""Base distributions p_Z for flows.

Each has ``log_prob(z) -> (N,)``, ``sample(n, rng) -> (n, D)``, ``grad_log_prob(z) -> (N, D)``
and ``backward(dlogp, z) -> dz``: the vector-Jacobian product of ``log_prob`` (it also adds the
gradients of any learnable parameters into ``grads``).
"""
import math

import numpy as np

from .core import Module, check_array

# A Python float, not np.float64: under NumPy 2 a NumPy float64 scalar would turn a float32
# log-density into float64, a Python float takes the array's dtype.
LOG_2PI = math.log(2 * math.pi)


class Distribution(Module):
    def __init__(self, dim, dtype=np.float64):
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"{type(self).__name__}: expected a positive dim, got {dim!r}")
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)

    def _check(self, z):
        return check_array(z, type(self).__name__, self.dim)

    def backward(self, dlogp, z):
        """dz = dlogp[:, None] * grad log p(z)."""
        return dlogp[:, None] * self.grad_log_prob(z)

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim})"


class StandardNormal(Distribution):
    r"""N(0, I).

    log p(z) = -0.5 * sum_j z_j^2 - 0.5 * D * log(2 pi);   grad log p(z) = -z
    """

    def log_prob(self, z):
        z = self._check(z)
        return -0.5 * np.einsum("nd,nd->n", z, z) - 0.5 * self.dim * LOG_2PI

    def grad_log_prob(self, z):
        return -z

    def sample(self, n, rng=None):
        rng = np.random.default_rng() if rng is None else rng
        return rng.standard_normal((n, self.dim)).astype(self.dtype, copy=False)


def softplus(x):
    """log(1 + exp(x)) without overflow."""
    return np.logaddexp(0.0, x)


class StandardLogistic(Distribution):
    r"""Independent standard logistic variables: NICE's prior.

    log p(z) = -sum_j [softplus(z_j) + softplus(-z_j)];   grad log p(z) = -tanh(z / 2)
    Sampling: z = log(u) - log(1 - u),  u ~ U(0, 1).
    References: Dinh, Krueger, Bengio (2014), arXiv:1410.8516
    """

    def log_prob(self, z):
        z = self._check(z)
        return -(softplus(z) + softplus(-z)).sum(axis=1)

    def grad_log_prob(self, z):
        return -np.tanh(0.5 * z)

    def sample(self, n, rng=None):
        rng = np.random.default_rng() if rng is None else rng
        u = rng.uniform(np.finfo(np.float64).tiny, 1.0, size=(n, self.dim))
        return (np.log(u) - np.log1p(-u)).astype(self.dtype, copy=False)


class DiagonalGaussian(Distribution):
    r"""N(mu, diag(sigma^2)) with learnable ``mu`` and ``log_sigma`` (both shape (D,)).

    log p(z) = sum_j [-0.5 * e_j^2 - log_sigma_j] - 0.5 * D * log(2 pi),  e = (z - mu) / sigma
    grad:  d/dz = -e / sigma;   d/dmu = e / sigma;   d/dlog_sigma = e^2 - 1
    """

    def __init__(self, dim, dtype=np.float64):
        super().__init__(dim, dtype)
        self.add_param("mu", np.zeros(self.dim, dtype=self.dtype))
        self.add_param("log_sigma", np.zeros(self.dim, dtype=self.dtype))

    def log_prob(self, z):
        z = self._check(z)
        e = (z - self.params["mu"]) * np.exp(-self.params["log_sigma"])
        return (-0.5 * e**2 - self.params["log_sigma"]).sum(axis=1) - 0.5 * self.dim * LOG_2PI

    def grad_log_prob(self, z):
        inv_sigma = np.exp(-self.params["log_sigma"])
        return -(z - self.params["mu"]) * inv_sigma**2

    def backward(self, dlogp, z):
        inv_sigma = np.exp(-self.params["log_sigma"])
        e = (z - self.params["mu"]) * inv_sigma
        self.grads["mu"] += dlogp @ (e * inv_sigma)
        self.grads["log_sigma"] += dlogp @ (e**2 - 1.0)
        return -dlogp[:, None] * e * inv_sigma

    def sample(self, n, rng=None):
        rng = np.random.default_rng() if rng is None else rng
        eps = rng.standard_normal((n, self.dim))
        return (self.params["mu"] + np.exp(self.params["log_sigma"]) * eps).astype(self.dtype)
