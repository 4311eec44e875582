r"""Elementwise bijectors."""
import numpy as np

from ..core import Bijector
from ..gradcheck import register


class Scaling(Bijector):
    r"""Diagonal scaling: NICE's last layer.

    Forward:  z = x * exp(s),            s (D,) learnable
    Inverse:  x = z * exp(-s)
    Log-det:  sum_j s_j (the same for every example)
    Backward: dx = dz * exp(s);   ds = sum_n (dz * x * exp(s)) + sum_n dlogdet
    Inverse backward: dz = dx * exp(-s);   ds = -sum_n (dx * x) - sum_n dlogdet
    References: Dinh, Krueger, Bengio (2014), arXiv:1410.8516, section 3.3
    """

    def __init__(self, dim, dtype=np.float64):
        super().__init__()
        self.dim = dim
        self.add_param("s", np.zeros(dim, dtype=dtype))

    def forward(self, x):
        x = self._check(x)
        s = self.params["s"]
        z = x * np.exp(s)
        return z, np.full(x.shape[0], s.sum(), dtype=z.dtype), (x, z)

    def inverse(self, z):
        z = self._check(z)
        s = self.params["s"]
        x = z * np.exp(-s)
        return x, np.full(z.shape[0], -s.sum(), dtype=x.dtype), (z, x)

    def backward(self, dz, dlogdet, cache):
        x, z = cache
        # z = x * exp(s), so dz/ds_j = z_j
        self.grads["s"] += (dz * z).sum(axis=0) + dlogdet.sum()
        return dz * np.exp(self.params["s"])

    def inverse_backward(self, dx, dlogdet, cache):
        z, x = cache
        # x = z * exp(-s), so dx/ds_j = -x_j
        self.grads["s"] -= (dx * x).sum(axis=0) + dlogdet.sum()
        return dx * np.exp(-self.params["s"])


register("Scaling", lambda d, r: Scaling(d))
