r"""Autoregressive flows: MAF and IAF, two uses of one MADE.

An affine autoregressive map transforms feature ``x_i`` with a shift ``mu_i`` and a log-scale
``alpha_i`` that depend only on the features before ``i`` in an order. Its Jacobian is then
triangular (in that order), so its log-determinant is the sum of the log-scales, and one pass
of a MADE (``nn.MADE``) gives every ``mu_i`` and ``alpha_i`` at once, *if the features they
depend on are known*. That decides which direction is parallel:

* ``MAF`` (masked autoregressive flow): the MADE reads the data ``x``; density evaluation
  (forward) is one pass, sampling (inverse) solves for x one feature at a time.
* ``IAF`` (inverse autoregressive flow): the MADE reads the noise ``z``; sampling is one pass,
  the density of a point IAF did not generate is sequential.

The sequential direction is computed by ``nflows_edu.kernels.maf_inverse`` (Numba), which
costs about one MADE pass rather than D; ``use_kernel=False`` runs the plain NumPy loop
``maf_inverse_reference`` (below ``MAF``) instead (D passes, the textbook version).
"""
import numpy as np

from ..core import Bijector, Inverse
from ..gradcheck import register
from ..nn import MADE
from .affine import soft_bound, soft_bound_backward


class MAF(Bijector):
    r"""Masked autoregressive flow layer (affine, with a soft-bounded log-scale).

    Forward (one MADE pass, parallel over features):
              (mu, r) = MADE(x),   alpha = s_max * tanh(r / s_max)   (so |alpha| < s_max)
              z_i = (x_i - mu_i(x_<i)) * exp(-alpha_i(x_<i))
    Inverse (sequential, in the MADE's order p_0, ..., p_{D-1}):
              x_{p_k} = z_{p_k} * exp(alpha_{p_k}) + mu_{p_k},  mu, alpha from x_{p_0..p_{k-1}}
    Log-det:  forward  -sum_i alpha_i;   inverse  +sum_i alpha_i
              (dz/dx is triangular in the order with diagonal exp(-alpha_i))
    Backward: dx_direct = dz * exp(-alpha);   dmu = -dx_direct
              dalpha = -dz * z - dlogdet;   dr = dalpha * (1 - (alpha / s_max)^2)
              dx = dx_direct + MADE.backward([dmu, dr])
    Inverse backward: not provided. The inverse is D dependent steps; its VJP would run
              back through all of them. Train MAF by maximum likelihood, in the forward
              direction (the usual case), or use ``IAF`` to train in the sampling direction.

    Shapes: x, z (N, D); logdet (N,).

    Parameters
    ----------
    dim : int, D >= 2
    hidden : sequence of int, the MADE's hidden layers (each >= D - 1 units)
    order : "natural", "reversed" or a permutation of 0..D-1: the order of the features
    activation : {"relu", "leaky_relu", "tanh"}
    s_max : float, the bound of the log-scale (as ``AffineCoupling``'s, by the same code)
    zero_init : bool, start the MADE's output layer at zero (the layer starts as the identity)
    use_kernel : bool, the Numba kernel (True) or the NumPy reference loop for the inverse

    References
    ----------
    Papamakarios, Pavlakou, Murray (2017), "Masked Autoregressive Flow for Density
    Estimation", arXiv:1705.07057. Germain et al. (2015), arXiv:1502.03509 (MADE).
    """

    vjps = ("forward",)

    def __init__(self, dim, hidden=(64, 64), order="natural", activation="relu", s_max=3.0,
                 rng=None, dtype=np.float64, zero_init=True, use_kernel=True):
        super().__init__()
        self.made = MADE(dim, hidden, order, activation, zero_last=zero_init, rng=rng,
                         dtype=dtype)
        self.dim = self.made.dim
        self.s_max = float(s_max)
        self.use_kernel = use_kernel

    def _shift_log_scale(self, inputs):
        out, made_cache = self.made._forward(inputs)  # inputs checked by the caller
        return out[:, :self.dim], soft_bound(out[:, self.dim:], self.s_max), made_cache

    def forward(self, x):
        x = self._check(x)
        mu, alpha, made_cache = self._shift_log_scale(x)
        exp_neg_alpha = np.exp(-alpha)
        z = x - mu
        z *= exp_neg_alpha
        return z, -alpha.sum(axis=1), (z, alpha, exp_neg_alpha, made_cache)

    def inverse(self, z):
        z = self._check(z)
        from .. import kernels  # here, not at the top: numba is slow to import (and imports scipy)
        sequential = kernels.maf_inverse if self.use_kernel else maf_inverse_reference
        x, logdet = sequential(self.made, z, self.s_max)
        return x, logdet, None

    def backward(self, dz, dlogdet, cache):
        z, alpha, exp_neg_alpha, made_cache = cache
        dx = dz * exp_neg_alpha
        dalpha = -dz * z
        dalpha -= dlogdet[:, None]
        dr = soft_bound_backward(dalpha, alpha, self.s_max)
        dx += self.made.backward(np.concatenate([-dx, dr], axis=1), made_cache)
        return dx

    def inverse_backward(self, dx, dlogdet, cache):
        raise NotImplementedError(
            "MAF.inverse_backward: MAF's inverse (sampling) is sequential, D dependent steps, "
            "and its VJP is not provided; train MAF in the forward direction (maximum "
            "likelihood, Flow.loss_and_grad), or use IAF to train in the sampling direction")

    def __repr__(self):
        return (f"MAF(dim={self.dim}, hidden={self.made.hidden}, "
                f"order={self.made.order.tolist()})")


def maf_inverse_reference(made, z, s_max):
    r"""MAF's inverse by the definition: D full MADE passes (the readable version).

    For k = 0..D-1, with i = p_k the k-th feature of ``made.order``:

        (mu, r) = MADE(x)        (x_i = 0 for the features not solved yet: the MADE's
                                  masks make mu_i and r_i ignore them)
        alpha_i = s_max * tanh(r_i / s_max)
        x_i     = z_i * exp(alpha_i) + mu_i
        logdet += alpha_i

    Parameters
    ----------
    made : nn.MADE
    z : ndarray (N, D)
    s_max : float, the bound of the log-scale

    Returns
    -------
    x : ndarray (N, D);  logdet : ndarray (N,), log|det dx/dz| = sum_i alpha_i
    """
    n, dim = z.shape
    x = np.zeros_like(z)
    logdet = np.zeros(n, dtype=z.dtype)
    for i in made.order:
        out, _ = made._forward(x)
        alpha = soft_bound(out[:, dim + i], s_max)
        x[:, i] = z[:, i] * np.exp(alpha) + out[:, i]
        logdet += alpha
    return x, logdet


class IAF(Inverse):
    r"""Inverse autoregressive flow layer, built as ``Inverse(MAF)``.

    Sampling (``inverse``, one MADE pass, parallel): the MADE reads the noise z,
              (mu, r) = MADE(z),   alpha = s_max * tanh(r / s_max)
              x_i = (z_i - mu_i(z_<i)) * exp(-alpha_i(z_<i))
    Density (``forward``, sequential in the MADE's order): solve for z one feature at a time,
              z_{p_k} = x_{p_k} * exp(alpha_{p_k}) + mu_{p_k},  mu, alpha from z_{p_0..p_{k-1}}
    Log-det:  inverse  -sum_i alpha_i;   forward  +sum_i alpha_i
    Backward (VJP of the sequential forward): not provided; train IAF in the sampling
              direction (``inverse`` / ``inverse_backward``, e.g. reverse KL), which is MAF's
              forward backward:
    Inverse backward: dz_direct = dx * exp(-alpha);  dmu = -dz_direct
              dalpha = -dx * x - dlogdet;  dr = dalpha * (1 - (alpha / s_max)^2)
              dz = dz_direct + MADE.backward([dmu, dr])

    Why ``Inverse(MAF)`` rather than a class of its own: IAF's sampling step is exactly MAF's
    forward map applied to noise (the paper's x_i = z_i * sigma_i + m_i is the same map with
    sigma_i = exp(-alpha_i) and m_i = -mu_i * exp(-alpha_i)), and IAF's density is exactly MAF's
    inverse. Building one from the other shares every line: the MADE, the bounded log-scale,
    the hand-written backward and the Numba kernel for the sequential direction, all checked
    once. The parameters are the wrapped MAF's (``bijector.made...``).

    Shapes: x, z (N, D); logdet (N,). Parameters: as ``MAF``.

    References
    ----------
    Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling (2016), "Improved Variational
    Inference with Inverse Autoregressive Flow", arXiv:1606.04934.
    """

    def __init__(self, dim, hidden=(64, 64), order="natural", activation="relu", s_max=3.0,
                 rng=None, dtype=np.float64, zero_init=True, use_kernel=True):
        super().__init__(MAF(dim, hidden, order, activation, s_max, rng, dtype, zero_init,
                             use_kernel))

    def backward(self, dz, dlogdet, cache):
        raise NotImplementedError(
            "IAF.backward: IAF's forward (the density of a given x) is sequential, D dependent "
            "steps, and its VJP is not provided; train IAF in the sampling direction (inverse "
            "and inverse_backward, e.g. reverse-KL training), or use MAF for maximum likelihood")

    def __repr__(self):
        maf = self.bijector
        return f"IAF(dim={self.dim}, hidden={maf.made.hidden}, order={maf.made.order.tolist()})"


# ------------------------------------------------------------------ the gradcheck registry
def _order(dim, rng):
    return rng.permutation(dim) if rng.random() < 0.5 else ("natural", "reversed")[
        int(rng.integers(2))]


# tanh MADEs (smooth, for central differences); hidden layers wide enough for every degree
# (at least D - 1 units)
register("MAF", lambda d, r: MAF(d, (max(8, d),) * 2, _order(d, r), "tanh", s_max=2.0, rng=r))
register("MAF(reference)",
         lambda d, r: MAF(d, (max(6, d),), _order(d, r), "tanh", s_max=2.0, rng=r,
                          use_kernel=False))
register("IAF", lambda d, r: IAF(d, (max(8, d),) * 2, _order(d, r), "tanh", s_max=2.0, rng=r))
