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


from ..assignment.catalogue import exercise  # noqa: E402

exercise("Scaling.forward", Scaling, "easy",
         "z = x * exp(s), every feature scaled, and the log-det sum_j s_j of each example",
         registry=("Scaling",),
         shapes="x (N, D) -> z (N, D), logdet (N,), cache (x, z)")
exercise("Scaling.inverse", Scaling, "easy",
         "x = z * exp(-s), every feature unscaled, and the log-det -sum_j s_j",
         registry=("Scaling",),
         shapes="z (N, D) -> x (N, D), logdet (N,), cache (z, x)")
exercise("Scaling.backward", Scaling, "easy",
         "the VJP of z = x * exp(s), with the gradient of the log-det sum s",
         registry=("Scaling",),
         shapes="dz (N, D), dlogdet (N,), cache (x, z) -> dx (N, D); add ds (D,) into "
                "self.grads['s']")
exercise("Scaling.inverse_backward", Scaling, "easy",
         "the VJP of x = z * exp(-s), log-det -sum s", registry=("Scaling",),
         shapes="dx (N, D), dlogdet (N,), cache (z, x) -> dz (N, D); add ds (D,)")
