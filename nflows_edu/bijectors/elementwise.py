r"""Elementwise bijectors."""
import numpy as np

from ..core import Bijector
from ..gradcheck import register


class Scaling(Bijector):
    r"""Diagonal scaling: NICE's last layer.

    Forward:  z = x * exp(log_s),            log_s (D,) learnable
    Inverse:  x = z * exp(-log_s)
    Log-det:  sum_j log_s[j] (the same for every example)
    Backward: dx = dz * exp(log_s);   dlog_s = sum_n (dz * x * exp(log_s)) + sum_n dlogdet
    Inverse backward: dz = dx * exp(-log_s);   dlog_s = -sum_n (dx * x) - sum_n dlogdet

    The parameter is the log of the scale s = exp(log_s) > 0 (NICE's S_ii), as in ``ActNorm``
    and ``LUInvertible1x1Conv``: the scale stays positive whatever the optimizer does.
    References: Dinh, Krueger, Bengio (2014), arXiv:1410.8516, section 3.3
    """

    def __init__(self, dim, dtype=np.float64):
        super().__init__()
        self.dim = dim
        self.add_param("log_s", np.zeros(dim, dtype=dtype))

    def forward(self, x):
        x = self._check(x)
        log_s = self.params["log_s"]
        z = x * np.exp(log_s)
        return z, np.full(x.shape[0], log_s.sum(), dtype=z.dtype), (x, z)

    def inverse(self, z):
        z = self._check(z)
        log_s = self.params["log_s"]
        x = z * np.exp(-log_s)
        return x, np.full(z.shape[0], -log_s.sum(), dtype=x.dtype), (z, x)

    def backward(self, dz, dlogdet, cache):
        x, z = cache
        # z = x * exp(log_s), so dz/dlog_s_j = z_j
        self.grads["log_s"] += (dz * z).sum(axis=0) + dlogdet.sum()
        return dz * np.exp(self.params["log_s"])

    def inverse_backward(self, dx, dlogdet, cache):
        z, x = cache
        # x = z * exp(-log_s), so dx/dlog_s_j = -x_j
        self.grads["log_s"] -= (dx * x).sum(axis=0) + dlogdet.sum()
        return dx * np.exp(-self.params["log_s"])


register("Scaling", lambda d, r: Scaling(d))
