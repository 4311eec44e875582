r"""Implicit normalizing flows (ImpFlow): a map defined by the root of an equation."""
import numpy as np

from ..core import Bijector
from ..gradcheck import register
from .residual import ResidualBlock, _randomize_lipschitz


class ImplicitBlock(Bijector):
    r"""One ImpFlow block: z is the root of  F(z, x) = g_x(x) - g_z(z) + x - z = 0.

    Forward:  r = x + g_x(x);   z solves  z + g_z(z) = r,   i.e.  z = (I + g_z)^{-1}((I + g_x)(x))
    Inverse:  r = z + g_z(z);   x solves  x + g_x(x) = r
    Log-det:  log det(I + J_gx(x)) - log det(I + J_gz(z))
              (dz/dx = -(dF/dz)^{-1} dF/dx = (I + J_gz(z))^{-1} (I + J_gx(x)))
    Backward (implicit function theorem; s is the gradient with respect to r):
              a  = dz - dlogdet * d log det(I + J_gz(z)) / dz
              s  = (I + J_gz(z))^{-T} a
              dx = (I + J_gx(x))^T s + dlogdet * d log det(I + J_gx(x)) / dx
              dtheta_z = -(dg_z/dtheta_z)^T s - dlogdet * d log det(I + J_gz) / dtheta_z
              dtheta_x =  (dg_x/dtheta_x)^T s + dlogdet * d log det(I + J_gx) / dtheta_x
    Inverse backward: the same with the roles of (x, g_x) and (z, g_z) swapped.

    ``g_x`` and ``g_z`` are two independent ``LipschitzMLP`` with Lip <= c < 1, so both
    ``I + g_x`` and ``I + g_z`` are invertible and F has exactly one root. The block is
    therefore the composition of a residual block and the *inverse* of another one,
    ``z = R_z^{-1}(R_x(x))``, and is built that way: ``fx`` and ``fz`` are ``ResidualBlock``s
    whose ``inverse`` / ``inverse_backward`` carry out the root finding and the implicit
    gradient above (a linear solve with I + J, never a backward pass through the iterations).
    The Jacobian's singular values can be as large as (1 + c) / (1 - c) (199 for c = 0.99)
    and as small as its inverse, where a residual block is confined to (1 - c, 1 + c).

    Root finding: Anderson-accelerated fixed-point iteration (``solver="anderson"``, default)
    rather than Broyden's method (the ImpFlow code's choice). Both only need evaluations of
    g; Anderson keeps m past residuals per example and solves one (m+1) x (m+1) system per
    step, which batches as one ``np.linalg.solve`` on a stack, needs no line search and no
    D x D inverse-Jacobian estimate per example; with c = 0.99 plain Banach iteration would
    need ~3000 steps (0.99^k < 1e-13), Anderson needs tens.

    Shapes: x, z (N, D); logdet (N,). Parameters are ``fx.g.*`` and ``fz.g.*``; the keyword
    arguments go to both ``ResidualBlock``s (``eval_seed`` to ``fx``, ``eval_seed + 1`` to
    ``fz``).
    References: Lu, Chen, Li, Wang, Zhu (2021), "Implicit Normalizing Flows", ICLR,
    arXiv:2103.09527.
    """

    def __init__(self, dim, hidden=(64,), c=0.99, activation="lipswish", logdet="exact",
                 solver="anderson", eval_seed=0, rng=None, dtype=np.float64, **kwargs):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.dim, self.c = int(dim), c
        self.fx = ResidualBlock(dim, hidden, c, activation, logdet, solver=solver, rng=rng,
                                dtype=dtype, eval_seed=eval_seed, **kwargs)
        self.fz = ResidualBlock(dim, hidden, c, activation, logdet, solver=solver, rng=rng,
                                dtype=dtype, eval_seed=eval_seed + 1, **kwargs)

    def forward(self, x):
        x = self._check(x)
        r, logdet_x, cache_x = self.fx.forward(x)
        z, logdet_z, cache_z = self.fz.inverse(r)      # logdet_z = -log det(I + J_gz(z))
        return z, logdet_x + logdet_z, (cache_x, cache_z)

    def inverse(self, z):
        z = self._check(z)
        r, logdet_z, cache_z = self.fz.forward(z)
        x, logdet_x, cache_x = self.fx.inverse(r)
        return x, logdet_z + logdet_x, (cache_x, cache_z)

    def backward(self, dz, dlogdet, cache):
        cache_x, cache_z = cache
        dr = self.fz.inverse_backward(dz, dlogdet, cache_z)
        return self.fx.backward(dr, dlogdet, cache_x)

    def inverse_backward(self, dx, dlogdet, cache):
        cache_x, cache_z = cache
        dr = self.fx.inverse_backward(dx, dlogdet, cache_x)
        return self.fz.backward(dr, dlogdet, cache_z)

    def __repr__(self):
        return f"ImplicitBlock(dim={self.dim}, c={self.c}, g_x={self.fx.g!r}, g_z={self.fz.g!r})"


# eps = 1e-5: both directions are Anderson solves to tol = 1e-13, an error that central
# differences with eps = 1e-6 divide by 2e-6: at 100 draws the gradient of LipSwish's scalar
# rho then measured 1.2e-6 of solver noise; with 1e-5, 1.0e-7 at worst over 100 draws.
# Every evaluation is two Anderson solves: the parameters are spot-checked on 24 entries per
# array (at 12 features the block has 426; each of its networks is checked entry by entry
# inside ResidualBlock's registration).
register("ImplicitBlock",
         lambda d, r: ImplicitBlock(d, (8,), c=0.8, power_iterations=0, rng=r),
         randomize=_randomize_lipschitz(1.2), eps=1e-5, entries=24)
