r"""Autoregressive neural spline flow: MAF's structure with a rational-quadratic spline in place
of the affine map (Durkan, Bekasov, Murray, Papamakarios 2019, arXiv:1906.04032, section 3.3).

A MADE (``nn.MADE`` with ``n_params = 3K - 1``) reads ``x`` and gives, for every feature
``i``, the ``3K - 1`` unnormalised parameters of a spline ``g_i`` (``bijectors.spline``),
each depending only on the features before ``i`` in the MADE's order. The Jacobian is then
triangular in that order with diagonal ``g_i'(x_i)``. As for MAF, density evaluation
(forward) is one MADE pass and sampling (inverse) goes one feature at a time:
``nflows_edu.kernels.spline_ar_inverse`` (Numba, about one MADE pass), or with
``use_kernel=False`` the plain NumPy loop ``spline_ar_inverse_reference`` (D passes, below
the class).
"""
import numpy as np

from ..core import Bijector, check_finite
from ..gradcheck import register
from ..nn import MADE
from .spline import DEFAULT_MIN, check_spline_options, rq_backward, rq_forward, rq_inverse


def split_spline_params(out, dim, n_bins):
    r"""The MADE's outputs as spline parameters per example and feature.

    Output ``p * D + i`` is parameter p of feature i (``nn.MADE``); per feature the
    parameters are ``K`` widths, ``K`` heights, ``K - 1`` derivatives, in that order.

    Parameters
    ----------
    out : ndarray (N, (3K - 1) D)
    dim : int, D;  n_bins : int, K

    Returns
    -------
    uw, uh : ndarray (N, D, K);  ud : ndarray (N, D, K - 1)  (views of ``out``)
    """
    K = n_bins
    theta = out.reshape(len(out), 3 * K - 1, dim).transpose(0, 2, 1)  # (N, D, 3K - 1)
    return theta[..., :K], theta[..., K:2 * K], theta[..., 2 * K:]


class SplineAutoregressive(Bijector):
    r"""Autoregressive rational-quadratic spline layer.

    Forward (one MADE pass, parallel over features):
              theta = MADE(x)  (N, (3K - 1) D);   (uw, uh, ud) = split(theta), per feature i
              uw_i, uh_i (K,), ud_i (K - 1,) functions of x_<i (the features before i)
              z_i = g(x_i; uw_i, uh_i, ud_i)                      (``rq_forward``)
    Inverse (sequential, in the MADE's order p_0, ..., p_{D-1}):
              x_{p_k} = g^{-1}(z_{p_k}; theta_{p_k}),  theta_{p_k} from x_{p_0..p_{k-1}}
              (``kernels.spline_ar_inverse``; ``use_kernel=False``: the NumPy loop
              ``spline_ar_inverse_reference``, D MADE passes and ``rq_inverse``)
    Log-det:  forward  sum_i log g'(x_i; theta_i);   inverse  minus that at the same point
              (dz/dx is triangular in the order with diagonal g'(x_i; theta_i))
    Backward: (dx_direct, duw, duh, dud) = rq_backward(dz, dlogdet)   (per element)
              dx = dx_direct + MADE.backward(dtheta),  dtheta = (duw, duh, dud) packed as
              theta
    Inverse backward: not provided. The inverse is D dependent steps; its VJP would run
              back through all of them. Train by maximum likelihood (the forward direction).

    Outside [-B, B] every g is the identity (linear tails): log-det 0 there.

    Shapes: x, z (N, D); logdet (N,).

    Parameters
    ----------
    dim, hidden, order, activation, use_kernel : as ``MAF``'s (D >= 2 features; the MADE's
        hidden layers, each >= D - 1 units; the order; the kernel or the NumPy loop)
    n_bins : int, K >= 2;  bound : float, B > 0
    min_width, min_height, min_derivative : float, the splines' minimum bin width and height
        (fractions of 2B; K of them must fit) and knot derivative (``bijectors.spline``)
    zero_init : bool, start the MADE's output layer at zero (every spline the identity)

    References
    ----------
    Durkan, Bekasov, Murray, Papamakarios (2019), "Neural Spline Flows", arXiv:1906.04032.
    Papamakarios, Pavlakou, Murray (2017), arXiv:1705.07057 (MAF); Germain et al. (2015),
    arXiv:1502.03509 (MADE).
    """

    vjps = ("forward",)

    def __init__(self, dim, hidden=(64, 64), order="natural", activation="relu", n_bins=8,
                 bound=3.0, min_width=DEFAULT_MIN, min_height=DEFAULT_MIN,
                 min_derivative=DEFAULT_MIN, rng=None, dtype=np.float64, zero_init=True,
                 use_kernel=True):
        super().__init__()
        check_spline_options(n_bins, bound, min_width, min_height, min_derivative,
                             "SplineAutoregressive")
        self.n_bins = int(n_bins)
        self.options = (float(bound), float(min_width), float(min_height), float(min_derivative))
        self.made = MADE(dim, hidden, order, activation, zero_last=zero_init, rng=rng,
                         dtype=dtype, n_params=3 * self.n_bins - 1)
        self.dim = self.made.dim
        self.use_kernel = use_kernel

    def forward(self, x):
        x = self._check(x)
        theta, made_cache = self.made._forward(x)
        check_finite(theta, "SplineAutoregressive: expected finite spline parameters from the "
                     "MADE")
        uw, uh, ud = split_spline_params(theta, self.dim, self.n_bins)
        z, logdet, spline_cache = rq_forward(x, uw, uh, ud, *self.options)
        return z, logdet.sum(axis=1), (spline_cache, made_cache)

    def inverse(self, z):
        z = self._check(z)
        for name, p, _ in self.made.parameters():  # the kernel would give NaN silently
            check_finite(p, f"SplineAutoregressive: expected finite MADE parameters ({name})")
        from .. import kernels  # here, not at the top: numba is slow to import (and imports scipy)
        sequential = (kernels.spline_ar_inverse if self.use_kernel
                      else spline_ar_inverse_reference)
        x, logdet = sequential(self.made, z, self.n_bins, self.options)
        return x, logdet, None

    def backward(self, dz, dlogdet, cache):
        spline_cache, made_cache = cache
        dx, duw, duh, dud = rq_backward(dz, np.broadcast_to(dlogdet[:, None], dz.shape),
                                        spline_cache)
        dtheta = np.concatenate([duw, duh, dud], axis=-1)  # (N, D, 3K - 1), as split's theta
        dx += self.made.backward(dtheta.transpose(0, 2, 1).reshape(len(dz), -1), made_cache)
        return dx

    def inverse_backward(self, dx, dlogdet, cache):
        raise NotImplementedError(
            "SplineAutoregressive.inverse_backward: the inverse (sampling) is sequential, D "
            "dependent steps, and its VJP is not provided; train SplineAutoregressive in the "
            "forward direction (maximum likelihood, Flow.loss_and_grad)")

    def __repr__(self):
        return (f"SplineAutoregressive(dim={self.dim}, hidden={self.made.hidden}, "
                f"order={self.made.order.tolist()}, n_bins={self.n_bins}, "
                f"bound={self.options[0]})")


def spline_ar_inverse_reference(made, z, n_bins, options):
    r"""``SplineAutoregressive``'s inverse by the definition: D full MADE passes.

    For k = 0..D-1, with i = p_k the k-th feature of ``made.order``:

        theta = MADE(x)         (x_i = 0 for the features not solved yet: the masks make
                                 feature i's spline parameters ignore them)
        x_i, logdet_i = rq_inverse(z_i; uw_i, uh_i, ud_i)   (the spline's inverse)
        logdet += logdet_i

    Parameters
    ----------
    made : nn.MADE with ``n_params = 3K - 1``
    z : ndarray (N, D)
    n_bins : int, K;  options : (bound, min_width, min_height, min_derivative)

    Returns
    -------
    x : ndarray (N, D);  logdet : ndarray (N,), log|det dx/dz| = -sum_i log g_i'(x_i)
    """
    n, dim = z.shape
    x = np.zeros_like(z)
    logdet = np.zeros(n, dtype=z.dtype)
    for i in made.order:
        theta, _ = made._forward(x)
        uw, uh, ud = split_spline_params(theta, dim, n_bins)
        one = slice(i, i + 1)
        x_i, logdet_i, _ = rq_inverse(z[:, one], uw[:, one], uh[:, one], ud[:, one], *options)
        x[:, i] = x_i[:, 0]
        logdet += logdet_i[:, 0]
    return x, logdet


# ------------------------------------------------------------------ the gradcheck registry
from .autoregressive import _order  # noqa: E402
from .spline import _randomize_coupling, _spline_inputs  # noqa: E402

# tanh MADEs (smooth, for central differences), hidden layers wide enough for every degree;
# points inside [-B, B] and in both tails; the coupling's quarter-scale move, for the same
# reason (the logits sum over many hidden units); the kernel and the NumPy loop both
register("SplineAutoregressive",
         lambda d, r: SplineAutoregressive(d, (max(8, d),) * 2, _order(d, r), "tanh",
                                           n_bins=int(r.integers(2, 6)), bound=2.0, rng=r),
         inputs=_spline_inputs, randomize=_randomize_coupling)
register("SplineAutoregressive(loop)",
         lambda d, r: SplineAutoregressive(d, (max(6, d),), _order(d, r), "tanh",
                                           n_bins=int(r.integers(2, 6)), bound=2.0, rng=r,
                                           use_kernel=False),
         inputs=_spline_inputs, randomize=_randomize_coupling)
