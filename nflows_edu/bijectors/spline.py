r"""Monotone rational-quadratic splines: the transform of neural spline flows (Durkan, Bekasov,
Murray, Papamakarios 2019, arXiv:1906.04032), with every gradient written by hand.

One spline per feature maps ``[-B, B]`` onto itself through ``K`` bins and is the identity
outside (linear tails). Its parameters, per feature, are ``K`` unnormalised widths ``uw``,
``K`` unnormalised heights ``uh`` and ``K - 1`` unnormalised derivatives ``ud``:

    w = m_w + (1 - K m_w) softmax(uw)            bin widths as fractions of 2B (sum to 1)
    h = m_h + (1 - K m_h) softmax(uh)            bin heights, likewise
    x_k = -B + 2B (w_0 + ... + w_{k-1})           knots, k = 0..K  (x_0 = -B, x_K = B)
    y_k = -B + 2B (h_0 + ... + h_{k-1})
    d_0 = d_K = 1                                 derivatives at the knots: 1 at the ends, so
    d_k = m_d + softplus(ud_k + c),  k = 1..K-1    the tails join smoothly; c = log(e^{1-m_d} - 1)
                                                  makes ud = 0 give d = 1

(``m_w``, ``m_h``, ``m_d`` are the minimum bin width, height and derivative). With ``uw = uh =
ud = 0`` the bins are equal and every derivative is 1: the spline is the identity.

In bin k (``x_k <= x < x_{k+1}``), with ``W = x_{k+1} - x_k``, ``H = y_{k+1} - y_k``,
``s = H / W``, ``xi = (x - x_k) / W`` in [0, 1], ``theta = xi (1 - xi)`` and
``delta = d_{k+1} + d_k - 2 s``  (equations 4 and 5 of the paper):

    g(x)  = y_k + H (s xi^2 + d_k theta) / (s + delta theta)
    g'(x) = s^2 (d_{k+1} xi^2 + 2 s theta + d_k (1 - xi)^2) / (s + delta theta)^2

The inverse (equations 6-8): for ``y`` in bin k of the y-knots, ``xi`` is the root in [0, 1] of
``a xi^2 + b xi + c = 0`` with

    a = H (s - d_k) + (y - y_k) delta,   b = H d_k - (y - y_k) delta,   c = -s (y - y_k)
    xi = 2c / (-b - sqrt(b^2 - 4ac))      (the form without cancellation: -b - sqrt(...) < 0)

**Backward.** ``g`` and ``log g'`` are functions of the point's bin through six numbers
``(x_k, W, y_k, H, d_k, d_{k+1})``; ``_bin_partials`` gives their partial derivatives. The
gradient of each goes to the knots and derivatives of that bin (``x_{k+1} = x_k + W``), then
through the cumulative sums (a reversed cumulative sum), the softmax and the softplus to
``uw``, ``uh``, ``ud``. The inverse's VJP uses the forward's: ``x = g^{-1}(y)`` has
``dx/dy = 1 / g'(x)`` and ``dx/dtheta = -(dg/dtheta) / g'(x)`` at fixed x (implicit function
theorem), so ``rq_inverse_backward`` calls the same code with the upstream gradient mapped
through those.

Points in the tails (|x| > B) pass through with log-det 0 and no parameter gradient; a point
exactly on an interior knot x_k lies in bin k (xi = 0). There ``g`` and ``g'`` are continuous
(the derivative d_k is shared by the two bins), but ``g''`` is not: ``log g'`` has a kink, and
its gradient at a knot is the one of bin k (the right-hand one).
"""
import numpy as np

from ..core import Bijector, check_finite
from ..gradcheck import randomize_parameters, register

DEFAULT_MIN = 1e-3  # minimum bin width, bin height and derivative


def check_spline_options(n_bins, bound, min_width, min_height, min_derivative, where):
    """``ValueError`` naming ``where`` unless K >= 2, B > 0 and the minima fit K bins."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"{where}: expected n_bins K an integer >= 2, got {n_bins!r}")
    if not (np.isfinite(bound) and bound > 0):
        raise ValueError(f"{where}: expected a positive finite bound B (the spline acts on "
                         f"[-B, B]), got {bound!r}")
    for name, m in (("min_width", min_width), ("min_height", min_height)):
        if not (np.isfinite(m) and 0 <= m and m * n_bins < 1):
            raise ValueError(f"{where}: expected 0 <= {name} < 1/K = {1 / n_bins:.4g} (K = "
                             f"{n_bins} bins must fit), got {m!r}")
    if not (np.isfinite(min_derivative) and min_derivative > 0):
        raise ValueError(f"{where}: expected a positive min_derivative, got {min_derivative!r}")


def _softmax(u):
    e = np.exp(u - u.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softplus(u):
    return np.logaddexp(0, u)


def _sigmoid(u):
    return 0.5 * (1 + np.tanh(0.5 * u))  # no overflow for large |u|


def spline_knots(uw, uh, ud, bound, min_width=DEFAULT_MIN, min_height=DEFAULT_MIN,
                 min_derivative=DEFAULT_MIN):
    r"""Knots and derivatives from the unnormalised parameters (see the module docstring).

    Parameters
    ----------
    uw, uh : ndarray (..., K)
    ud : ndarray (..., K - 1)

    Returns
    -------
    xk, yk : ndarray (..., K + 1), the knots, from -B to B
    d : ndarray (..., K + 1), the derivatives at the knots (d_0 = d_K = 1)
    """
    K = uw.shape[-1]
    w = min_width + (1 - K * min_width) * _softmax(uw)
    h = min_height + (1 - K * min_height) * _softmax(uh)
    shift = float(np.log(np.expm1(1 - min_derivative)))  # a Python float keeps float32 float32
    ones = np.ones(uw.shape[:-1] + (1,), dtype=uw.dtype)
    xk = np.concatenate([-bound * ones, -bound + 2 * bound * np.cumsum(w, axis=-1)], axis=-1)
    yk = np.concatenate([-bound * ones, -bound + 2 * bound * np.cumsum(h, axis=-1)], axis=-1)
    xk[..., -1] = yk[..., -1] = bound  # the sums are 1 up to round-off
    d = np.concatenate([ones, min_derivative + _softplus(ud + shift), ones], axis=-1)
    return xk, yk, d


def _bin_of(v, knots):
    """The bin k of each v: the number of interior knots <= v (so a knot x_k is in bin k)."""
    return np.sum(v[..., None] >= knots[..., 1:-1], axis=-1)


def _at(a, k):
    """a[..., k] for one k per point: (..., K + 1) and (...) -> (...)."""
    return np.take_along_axis(a, k[..., None], axis=-1)[..., 0]


def _bin_values(x, xk, yk, d, k):
    """The point's bin quantities (x_k, W, y_k, H, d_k, d_{k+1}) and xi, all of x's shape."""
    x0, W = _at(xk, k), _at(xk, k + 1) - _at(xk, k)
    y0, H = _at(yk, k), _at(yk, k + 1) - _at(yk, k)
    d0, d1 = _at(d, k), _at(d, k + 1)
    xi = np.clip((x - x0) / W, 0, 1)
    return x0, W, y0, H, d0, d1, xi


def _bin_partials(xi, W, H, d0, d1):
    r"""g - y_k, log g' and their partial derivatives in one bin.

    Treating ``xi, s, H, d_k, d_{k+1}`` as independent (``s = H / W``), with
    ``P = s xi^2 + d_k theta``, ``Dn = s + delta theta`` (``g - y_k = H P / Dn``),
    ``Q = d_{k+1} xi^2 + 2 s theta + d_k (1 - xi)^2`` (``log g' = 2 log s + log Q - 2 log Dn``),
    ``theta' = 1 - 2 xi``:

        dg/dH   = P / Dn
        dg/ds   = H (xi^2 Dn - P (1 - 2 theta)) / Dn^2
        dg/dd_k = H theta (Dn - P) / Dn^2,     dg/dd_{k+1} = -H P theta / Dn^2
        dg/dxi  = H ((2 s xi + d_k theta') Dn - P delta theta') / Dn^2
        dL/ds   = 2 / s + 2 theta / Q - 2 (1 - 2 theta) / Dn
        dL/dd_k = (1 - xi)^2 / Q - 2 theta / Dn,   dL/dd_{k+1} = xi^2 / Q - 2 theta / Dn
        dL/dxi  = (2 d_{k+1} xi + 2 s theta' - 2 d_k (1 - xi)) / Q - 2 delta theta' / Dn

    Returns ``(g_minus_yk, L, partials)`` with ``partials`` a dict of those arrays.
    """
    s = H / W
    theta = xi * (1 - xi)
    dtheta = 1 - 2 * xi
    delta = d1 + d0 - 2 * s
    P = s * xi ** 2 + d0 * theta
    Dn = s + delta * theta
    Q = d1 * xi ** 2 + 2 * s * theta + d0 * (1 - xi) ** 2
    g = H * P / Dn
    L = 2 * np.log(s) + np.log(Q) - 2 * np.log(Dn)
    partials = dict(
        g_H=P / Dn,
        g_s=H * (xi ** 2 * Dn - P * (1 - 2 * theta)) / Dn ** 2,
        g_d0=H * theta * (Dn - P) / Dn ** 2,
        g_d1=-H * P * theta / Dn ** 2,
        g_xi=H * ((2 * s * xi + d0 * dtheta) * Dn - P * delta * dtheta) / Dn ** 2,
        L_s=2 / s + 2 * theta / Q - 2 * (1 - 2 * theta) / Dn,
        L_d0=(1 - xi) ** 2 / Q - 2 * theta / Dn,
        L_d1=xi ** 2 / Q - 2 * theta / Dn,
        L_xi=(2 * d1 * xi + 2 * s * dtheta - 2 * d0 * (1 - xi)) / Q - 2 * delta * dtheta / Dn,
        s=s, xi=xi, W=W)
    return g, L, partials


def rq_forward(x, uw, uh, ud, bound=3.0, min_width=DEFAULT_MIN, min_height=DEFAULT_MIN,
               min_derivative=DEFAULT_MIN):
    r"""z = g(x) elementwise, and log g'(x).

    Parameters
    ----------
    x : ndarray (N, D)
    uw, uh : ndarray (N, D, K);  ud : ndarray (N, D, K - 1)  (one spline per point and feature)

    Returns
    -------
    z : ndarray (N, D);  logdet : ndarray (N, D), elementwise log g'(x) (0 in the tails);
    cache : what ``rq_backward`` reads
    """
    options = (bound, min_width, min_height, min_derivative)
    xk, yk, d = spline_knots(uw, uh, ud, *options)
    inside = (x >= -bound) & (x <= bound)
    xc = np.clip(x, -bound, bound)
    k = _bin_of(xc, xk)
    x0, W, y0, H, d0, d1, xi = _bin_values(xc, xk, yk, d, k)
    g, L, partials = _bin_partials(xi, W, H, d0, d1)
    z = np.where(inside, y0 + g, x)
    logdet = np.where(inside, L, 0.0).astype(x.dtype, copy=False)
    return z, logdet, (uw, uh, ud, options, inside, k, partials)


def rq_inverse(z, uw, uh, ud, bound=3.0, min_width=DEFAULT_MIN, min_height=DEFAULT_MIN,
               min_derivative=DEFAULT_MIN):
    r"""x = g^{-1}(z) elementwise (the root of the quadratic), and log (g^{-1})'(z) = -log g'(x).

    Shapes as ``rq_forward``; returns ``(x, logdet (N, D), cache)`` for ``rq_inverse_backward``.
    """
    options = (bound, min_width, min_height, min_derivative)
    xk, yk, d = spline_knots(uw, uh, ud, *options)
    inside = (z >= -bound) & (z <= bound)
    zc = np.clip(z, -bound, bound)
    k = _bin_of(zc, yk)
    x0, W = _at(xk, k), _at(xk, k + 1) - _at(xk, k)
    y0, H = _at(yk, k), _at(yk, k + 1) - _at(yk, k)
    d0, d1 = _at(d, k), _at(d, k + 1)
    s = H / W
    dy = zc - y0
    delta = d1 + d0 - 2 * s
    a = H * (s - d0) + dy * delta
    b = H * d0 - dy * delta
    c = -s * dy
    discriminant = np.maximum(b ** 2 - 4 * a * c, 0)  # >= 0 in exact arithmetic
    xi = np.clip(2 * c / (-b - np.sqrt(discriminant)), 0, 1)
    x = np.where(inside, x0 + xi * W, z)
    _, L, partials = _bin_partials(xi, W, H, d0, d1)
    logdet = np.where(inside, -L, 0.0).astype(z.dtype, copy=False)
    return x, logdet, (uw, uh, ud, options, inside, k, partials)


def _parameter_grads(dg, dL, cache):
    r"""(dx at fixed parameters, duw, duh, dud) from dg = dloss/dg and dL = dloss/dlog g' at
    each point (zero in the tails), through the bin's six numbers, the knots, the cumulative
    sums, the softmax and the softplus."""
    uw, uh, ud, (bound, min_width, min_height, min_derivative), inside, k, p = cache
    dg, dL = np.where(inside, dg, 0.0), np.where(inside, dL, 0.0)
    W, s, xi = p["W"], p["s"], p["xi"]
    d_xi = dg * p["g_xi"] + dL * p["L_xi"]
    d_s = dg * p["g_s"] + dL * p["L_s"]
    d_H = dg * p["g_H"] + d_s / W                     # s = H / W
    d_W = -d_xi * xi / W - d_s * s / W                # xi = (x - x_k) / W
    d_x0 = -d_xi / W
    d_y0 = dg
    # to the knots of the bin: W = x_{k+1} - x_k, H = y_{k+1} - y_k
    K = uw.shape[-1]
    at_k = np.arange(K + 1) == k[..., None]           # (N, D, K + 1) one-hot
    at_k1 = np.arange(K + 1) == k[..., None] + 1
    dxk = at_k * (d_x0 - d_W)[..., None] + at_k1 * d_W[..., None]
    dyk = at_k * (d_y0 - d_H)[..., None] + at_k1 * d_H[..., None]
    dd = (at_k * (dg * p["g_d0"] + dL * p["L_d0"])[..., None]
          + at_k1 * (dg * p["g_d1"] + dL * p["L_d1"])[..., None])
    # knots x_j = -B + 2B sum_{i<j} w_i for the interior j = 1..K-1 (x_0, x_K are fixed), so
    # dw_i = 2B sum_{j=i+1}^{K-1} dx_j: a reversed cumulative sum
    def to_fractions(dknots):
        interior = dknots[..., 1:K]
        tail_sums = np.cumsum(interior[..., ::-1], axis=-1)[..., ::-1]
        zero = np.zeros(interior.shape[:-1] + (1,), dtype=interior.dtype)
        return 2 * bound * np.concatenate([tail_sums, zero], axis=-1)

    def through_softmax(du_fraction, u, minimum):
        q = _softmax(u)
        dq = (1 - K * minimum) * du_fraction
        return q * (dq - np.sum(q * dq, axis=-1, keepdims=True))

    duw = through_softmax(to_fractions(dxk), uw, min_width)
    duh = through_softmax(to_fractions(dyk), uh, min_height)
    shift = float(np.log(np.expm1(1 - min_derivative)))  # a Python float keeps float32 float32
    dud = dd[..., 1:K] * _sigmoid(ud + shift)
    dx = np.where(inside, d_xi / W, 0.0)
    return dx, duw, duh, dud


def rq_backward(dz, dlogdet, cache):
    r"""VJP of ``rq_forward``: dz (N, D), dlogdet (N, D) (per element) ->
    ``(dx (N, D), duw (N, D, K), duh (N, D, K), dud (N, D, K - 1))``. In the tails dx = dz."""
    inside = cache[4]
    dx_inside, duw, duh, dud = _parameter_grads(dz, dlogdet, cache)
    return np.where(inside, dx_inside, dz), duw, duh, dud


def rq_inverse_backward(dx, dlogdet, cache):
    r"""VJP of ``rq_inverse``: dx (N, D), dlogdet (N, D) -> ``(dz, duw, duh, dud)``.

    With x = g^{-1}(z) and the output log-det -log g'(x):  the loss's total derivative in x
    (parameters fixed) is ``u' = dx - dlogdet * dlog g'/dx``; then ``dz = u' / g'(x)`` and the
    parameter gradients are the forward's with ``dg = -u' / g'(x)`` and ``dL = -dlogdet``
    (since ``dx/dtheta = -(dg/dtheta) / g'``).
    """
    uw, uh, ud, options, inside, k, p = cache
    L_x = p["L_xi"] / p["W"]
    g_prime = p["g_xi"] / p["W"]                      # dg/dx = dg/dxi / W
    u = (dx - dlogdet * L_x) / g_prime
    _, duw, duh, dud = _parameter_grads(-u, -dlogdet, cache)
    return np.where(inside, u, dx), duw, duh, dud


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

class RQSpline(Bijector):
    r"""One rational-quadratic spline per feature, the same for every example (its parameters
    are the layer's own): the elementwise layer, and the spline on its own in the checks.

    Forward:  z_j = g_j(x_j),  logdet = sum_j log g_j'(x_j)    (``rq_forward``)
    Inverse:  x_j = g_j^{-1}(z_j)                                (``rq_inverse``)
    Backward: ``rq_backward`` per example, parameter gradients summed over the batch

    Parameters ``uw``, ``uh`` (D, K) and ``ud`` (D, K - 1), all 0 at the start (the identity).
    """

    def __init__(self, dim, n_bins=8, bound=3.0, min_width=DEFAULT_MIN, min_height=DEFAULT_MIN,
                 min_derivative=DEFAULT_MIN, dtype=np.float64):
        super().__init__()
        check_spline_options(n_bins, bound, min_width, min_height, min_derivative, "RQSpline")
        self.dim, self.n_bins = int(dim), int(n_bins)
        self.options = (float(bound), float(min_width), float(min_height), float(min_derivative))
        self.add_param("uw", np.zeros((dim, n_bins), dtype=dtype))
        self.add_param("uh", np.zeros((dim, n_bins), dtype=dtype))
        self.add_param("ud", np.zeros((dim, n_bins - 1), dtype=dtype))

    def _per_example(self, n):
        for name in ("uw", "uh", "ud"):
            check_finite(self.params[name], f"RQSpline: expected finite spline parameters "
                         f"({name})")
        return [np.broadcast_to(self.params[k], (n,) + self.params[k].shape)
                for k in ("uw", "uh", "ud")]

    def forward(self, x):
        x = self._check(x)
        z, logdet, cache = rq_forward(x, *self._per_example(len(x)), *self.options)
        return z, logdet.sum(axis=1), cache

    def inverse(self, z):
        z = self._check(z)
        x, logdet, cache = rq_inverse(z, *self._per_example(len(z)), *self.options)
        return x, logdet.sum(axis=1), cache

    def _add_grads(self, duw, duh, dud):
        self.grads["uw"] += duw.sum(axis=0)
        self.grads["uh"] += duh.sum(axis=0)
        self.grads["ud"] += dud.sum(axis=0)

    def backward(self, dz, dlogdet, cache):
        dx, duw, duh, dud = rq_backward(dz, np.broadcast_to(dlogdet[:, None], dz.shape), cache)
        self._add_grads(duw, duh, dud)
        return dx

    def inverse_backward(self, dx, dlogdet, cache):
        dz, duw, duh, dud = rq_inverse_backward(dx, np.broadcast_to(dlogdet[:, None], dx.shape),
                                                cache)
        self._add_grads(duw, duh, dud)
        return dz

    def __repr__(self):
        return f"RQSpline(dim={self.dim}, n_bins={self.n_bins}, bound={self.options[0]})"


from .coupling import _Coupling  # noqa: E402  (the mask bookkeeping of every coupling layer)


class SplineCoupling(_Coupling):
    r"""Rational-quadratic spline coupling (Durkan et al. 2019, section 3.2).

    Forward:  z_a = x_a;  z_b = g(x_b; theta),   theta = net(x_a)  (N, D_b, 3K - 1):
              uw = theta[..., :K],  uh = theta[..., K:2K],  ud = theta[..., 2K:]
    Inverse:  x_b = g^{-1}(z_b; theta(z_a))
    Log-det:  sum_j log g'(x_b,j)
    Backward: (dx_b, duw, duh, dud) = rq_backward(dz_b, dlogdet);
              dx_a = dz_a + net.backward([duw, duh, dud])
    Inverse backward: the same with rq_inverse_backward.

    With ``zero_init`` the net's last layer starts at 0: theta = 0, every spline the identity.
    """

    def __init__(self, mask, hidden=(64, 64), activation="relu", n_bins=8, bound=3.0,
                 min_width=DEFAULT_MIN, min_height=DEFAULT_MIN, min_derivative=DEFAULT_MIN,
                 rng=None, dtype=np.float64, zero_init=True):
        check_spline_options(n_bins, bound, min_width, min_height, min_derivative,
                             "SplineCoupling")
        super().__init__(mask, 3 * n_bins - 1, hidden, activation, rng, dtype, zero_init)
        self.n_bins = int(n_bins)
        self.options = (float(bound), float(min_width), float(min_height), float(min_derivative))

    def _spline_params(self, inputs_a):
        """(uw, uh, ud, net_cache) from the conditioning half."""
        out, net_cache = self.net._forward(inputs_a)
        check_finite(out, "SplineCoupling: expected finite spline parameters from the net")
        K = self.n_bins
        theta = out.reshape(len(out), -1, 3 * K - 1)
        return theta[..., :K], theta[..., K:2 * K], theta[..., 2 * K:], net_cache

    def _net_backward(self, duw, duh, dud, net_cache):
        dtheta = np.concatenate([duw, duh, dud], axis=-1)
        return self.net.backward(dtheta.reshape(len(dtheta), -1), net_cache)

    def forward(self, x):
        x = self._check(x)
        x_a, x_b = self._split(x)
        uw, uh, ud, net_cache = self._spline_params(x_a)
        z_b, logdet, spline_cache = rq_forward(x_b, uw, uh, ud, *self.options)
        return self._join(x_a, z_b), logdet.sum(axis=1), (spline_cache, net_cache)

    def inverse(self, z):
        z = self._check(z)
        z_a, z_b = self._split(z)
        uw, uh, ud, net_cache = self._spline_params(z_a)
        x_b, logdet, spline_cache = rq_inverse(z_b, uw, uh, ud, *self.options)
        return self._join(z_a, x_b), logdet.sum(axis=1), (spline_cache, net_cache)

    def backward(self, dz, dlogdet, cache):
        spline_cache, net_cache = cache
        dz_a, dz_b = self._split(dz)
        dx_b, duw, duh, dud = rq_backward(dz_b, np.broadcast_to(dlogdet[:, None], dz_b.shape),
                                          spline_cache)
        dx_a = dz_a + self._net_backward(duw, duh, dud, net_cache)
        return self._join(dx_a, dx_b)

    def inverse_backward(self, dx, dlogdet, cache):
        spline_cache, net_cache = cache
        dx_a, dx_b = self._split(dx)
        dz_b, duw, duh, dud = rq_inverse_backward(
            dx_b, np.broadcast_to(dlogdet[:, None], dx_b.shape), spline_cache)
        dz_a = dx_a + self._net_backward(duw, duh, dud, net_cache)
        return self._join(dz_a, dz_b)


# ------------------------------------------------------------------ the gradcheck registry
def _spline_inputs(layer, n, rng):
    """Points inside [-B, B] and in both tails (|x| > B for about one in six)."""
    return rng.normal(0.0, 0.7 * layer.options[0], (n, layer.dim))


def _random_mask(dim, rng):
    mask = np.zeros(dim, dtype=np.int64)
    mask[rng.choice(dim, size=int(rng.integers(1, dim)), replace=False)] = 1
    return mask


def _randomize_spline(layer, rng, scale):
    """Half the registry's usual move: the parameters are K-way softmax logits, and at the full
    scale some draws give bins of slope 0.01 beside slope 50, where the central differences of
    the checks (not the layer) lose their accuracy."""
    return randomize_parameters(layer, rng, 0.5 * scale)


def _randomize_coupling(layer, rng, scale):
    """A quarter of the usual move for the coupling's net: its outputs (the logits) sum over
    up to 11 conditioning features, so they spread more than a single spline's parameters."""
    return randomize_parameters(layer, rng, 0.25 * scale)


register("RQSpline", lambda d, r: RQSpline(d, n_bins=int(r.integers(2, 7)), bound=2.0),
         inputs=_spline_inputs, randomize=_randomize_spline)
register("SplineCoupling",
         lambda d, r: SplineCoupling(_random_mask(d, r), (8,), "tanh", n_bins=int(r.integers(2, 6)),
                                     bound=2.0, rng=r),
         inputs=_spline_inputs, randomize=_randomize_coupling)
