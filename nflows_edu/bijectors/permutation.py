r"""Fixed permutations of the features: volume preserving, no parameters."""
import numpy as np

from ..core import Bijector
from ..gradcheck import register


class Permutation(Bijector):
    r"""Reorder the features.

    Forward:  z = x[:, perm];   Inverse:  x = z[:, inv],  inv = argsort(perm)
    Log-det:  0 (a permutation matrix has |det| = 1)
    Backward: dx = dz[:, inv];  Inverse backward: dz = dx[:, perm]

    Parameters
    ----------
    perm : array of int, optional
        The permutation; if omitted, a random one drawn from ``rng``. Saved as a buffer.
    """

    def __init__(self, dim, perm=None, rng=None):
        super().__init__()
        self.dim = dim
        if perm is None:
            rng = np.random.default_rng() if rng is None else rng
            perm = rng.permutation(dim)
        perm = np.asarray(perm, dtype=np.int64)
        if perm.shape != (dim,) or not np.array_equal(np.sort(perm), np.arange(dim)):
            raise ValueError(f"Permutation: expected a permutation of 0..{dim - 1}, got {perm}")
        self.buffers["perm"] = perm

    @property
    def perm(self):
        return self.buffers["perm"]

    @property
    def inv(self):
        return np.argsort(self.buffers["perm"])

    def forward(self, x):
        x = self._check(x)
        return x[:, self.perm], np.zeros(x.shape[0], dtype=x.dtype), None

    def inverse(self, z):
        z = self._check(z)
        return z[:, self.inv], np.zeros(z.shape[0], dtype=z.dtype), None

    def backward(self, dz, dlogdet, cache):
        return dz[:, self.inv]

    def inverse_backward(self, dx, dlogdet, cache):
        return dx[:, self.perm]


class Reverse(Permutation):
    r"""Reverse the order of the features: ``perm = [D-1, ..., 1, 0]`` (its own inverse)."""

    def __init__(self, dim):
        super().__init__(dim, perm=np.arange(dim)[::-1])


register("Permutation", lambda d, r: Permutation(d, rng=r))
register("Reverse", lambda d, r: Reverse(d))
