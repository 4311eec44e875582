r"""Planar and radial flows (Rezende and Mohamed 2015), defined in the sampling direction.

The paper writes each layer as a map ``f`` from noise to data, ``x = f(z)``, with a cheap
log-determinant: these flows were built for variational inference, where one only samples
and evaluates the density of one's own samples. In this library's contract ``forward`` is
data to noise, so the paper's ``f`` is our ``inverse`` and our ``forward`` must solve
``f(z) = x`` for ``z``. Both maps move a point along one known direction (``u_hat`` for planar,
the ray from ``z0`` for radial), so the solve is a scalar equation per example:

* planar: a safeguarded Newton iteration on ``a + c * tanh(a) = s`` (``a`` is the
  pre-activation), vectorised over the batch;
* radial: the scalar equation for the radius is a quadratic, solved in closed form.

The constraints on the parameters (below) make each scalar equation strictly monotone, which
is what makes the layer invertible at all.
"""
import numpy as np

from ..core import Bijector
from ..gradcheck import register


def _softplus(a):
    return np.logaddexp(0.0, a)


def _sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # = 1 / (1 + exp(-a)), without overflow


class Planar(Bijector):
    r"""Planar flow, with the constraint ``w . u_hat > -1`` that makes it invertible.

    Sampling direction (the paper's f; our ``inverse``), ``z`` (N, D) -> ``x`` (N, D):

        m(a)  = -1 + softplus(a),   u_hat = u + (m(w.u) - w.u) * w / ||w||^2   (so w.u_hat = m)
        a     = z @ w + b,          t = tanh(a),   t' = 1 - t^2
        x     = z + t * u_hat
    Inverse log-det:  log(1 + t' * m)              (> 0 inside the log because m > -1)
              computed as log(t^2 + softplus(w.u) t'), the same number, which stays positive
              in floating point when w.u is so negative that m rounds to -1 (``_slope``)

    Normalizing direction (our ``forward``), ``x`` -> ``z``: taking ``w .`` of the sampling
    map gives one scalar equation per example for the unknown pre-activation ``a``,

        a + m * tanh(a) = s,    s = x @ w + b,

    whose left side is strictly increasing (slope 1 + m t' >= min(1, 1 + m) > 0) and within
    |m| of ``a``; it is solved by Newton's method safeguarded by bisection on the bracket
    [s - |m|, s + |m|] (``_solve``), to round-off. Then ``z = x - tanh(a) * u_hat``.
    Forward log-det:  -log(1 + t' * m)

    Cost: sampling O(N D); density O(N D) plus O(N) per Newton iteration: the solve is along
    the known direction ``u_hat``, one scalar per example. Measured over 1000 random layers
    (parameters moved by up to 5 N(0, 1), 1000 points each, the batch stopping when its last
    example has converged): median 6 iterations, 90% within 12, 99% within 16, at most 18.

    Inverse backward (VJP of the sampling map; ``dx``, ``dlogdet`` given):
        dt = dx @ u_hat;   du_hat = sum_n t_n dx_n;   dden = dlogdet / (1 + t' m)
        da = dt * t' + dden * m * (-2 t t');   dm = sum_n dden_n t'_n
        dz = dx + da * w;   dw = z^T da;   db = sum_n da_n
    Backward (VJP of the normalizing map, by the implicit function theorem on the scalar
    equation: da/ds = 1 / (1 + m t'),  da/dm = -t / (1 + m t')):
        dt = -dz @ u_hat;   du_hat = -sum_n t_n dz_n;   dden = -dlogdet / (1 + t' m)
        ga = dt * t' + dden * m * (-2 t t');   gs = ga / (1 + m t')
        dm = sum_n (dden_n t'_n - gs_n t_n)
        dx = dz + gs * w;   dw = x^T gs;   db = sum_n gs_n
    Both then carry (du_hat, dm) back to (u, w) through u_hat = u + k w, k = (m - w.u)/||w||^2
    and m = -1 + softplus(w.u) (``_constraint_backward``).

    Parameters
    ----------
    dim : int
    rng : numpy.random.Generator, for ``u`` and ``w`` ~ U(-1/sqrt(D), 1/sqrt(D)); ``b = 0``.

    References
    ----------
    Rezende and Mohamed (2015), Variational inference with normalizing flows,
    arXiv:1505.05770, section 4.1 and appendix A.1.
    """

    MAX_NEWTON = 100

    def __init__(self, dim, rng=None, dtype=np.float64):
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"Planar: expected a positive dim, got {dim!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.dim = int(dim)
        bound = 1.0 / np.sqrt(dim)
        self.add_param("u", rng.uniform(-bound, bound, dim).astype(dtype))
        self.add_param("w", rng.uniform(-bound, bound, dim).astype(dtype))
        self.add_param("b", np.zeros(1, dtype=dtype))

    def _constrained(self):
        """(u_hat, m, k): the invertibility constraint, u_hat = u + k w with w.u_hat = m."""
        u, w = self.params["u"], self.params["w"]
        wu = w @ u
        m = -1.0 + _softplus(wu)
        k = (m - wu) / (w @ w)
        return u + k * w, m, k

    def _slope(self, t):
        """1 + m (1 - t^2), written as t^2 + softplus(w.u) (1 - t^2): when w.u is very negative,
        m rounds to -1 and the first form would give 0 at t = 0, the second stays positive."""
        return t * t + _softplus(self.params["w"] @ self.params["u"]) * (1.0 - t * t)

    def _constraint_backward(self, du_hat, dm, m, k):
        u, w = self.params["u"], self.params["w"]
        wu, ww = w @ u, w @ w
        dk = du_hat @ w
        dm = dm + dk / ww
        dwu = dm * _sigmoid(wu) - dk / ww
        self.grads["u"] += du_hat + dwu * w
        self.grads["w"] += k * du_hat + dwu * u - (2 * dk * (m - wu) / ww**2) * w

    def inverse(self, z):
        z = self._check(z)
        u_hat, m, _ = self._constrained()
        t = np.tanh(z @ self.params["w"] + self.params["b"][0])
        x = z + t[:, None] * u_hat
        return x, np.log(self._slope(t)), (z, t)

    def inverse_backward(self, dx, dlogdet, cache):
        z, t = cache
        u_hat, m, k = self._constrained()
        dt_da = 1.0 - t * t
        dden = dlogdet / self._slope(t)
        da = (dx @ u_hat) * dt_da + dden * m * (-2.0 * t * dt_da)
        self.grads["b"] += da.sum()
        self.grads["w"] += z.T @ da
        self._constraint_backward(t @ dx, dden @ dt_da, m, k)
        return dx + da[:, None] * self.params["w"]

    def _solve(self, s, m):
        r"""Solve a + m tanh(a) = s for a (N,), elementwise.

        Newton's method kept safe by a bracket [lo, hi] around the root (the rule of
        ``rtsafe`` in Numerical Recipes): where a Newton step would leave the bracket, or is not
        at least half the step before last (Newton can cycle on tanh's S shape), the bracket is
        halved instead. The bracket shrinks every iteration, so it always converges.
        """
        lo, hi = s - abs(m), s + abs(m)
        a = np.clip(s - m * np.tanh(s), lo, hi)  # one fixed-point step: exact where tanh is flat
        tol = 4 * np.finfo(s.dtype).eps
        last = older = hi - lo
        for _ in range(self.MAX_NEWTON):
            t = np.tanh(a)
            g = a + m * t - s
            # g is increasing: the root is below a where g > 0 and above where g < 0
            hi = np.where(g > 0, a, hi)
            lo = np.where(g < 0, a, lo)
            step = g / self._slope(t)
            converged = np.abs(step) <= tol * (1.0 + np.abs(a))
            # near a flat spot (m close to -1) round-off in g keeps the step above tol: there
            # the bracket itself shrinks to round-off, and its midpoint is the answer
            squeezed = hi - lo <= tol * (1.0 + np.abs(a))
            new = a - step
            bisect = (((new <= lo) | (new >= hi) | (2 * np.abs(step) > np.abs(older)))
                      & ~converged) | squeezed
            older, last = last, np.where(bisect, 0.5 * (hi - lo), step)
            a = np.where(bisect, 0.5 * (lo + hi), new)
            if (converged | squeezed).all():
                break
        return a

    def forward(self, x):
        x = self._check(x)
        u_hat, m, _ = self._constrained()
        a = self._solve(x @ self.params["w"] + self.params["b"][0], m)
        t = np.tanh(a)
        z = x - t[:, None] * u_hat
        return z, -np.log(self._slope(t)), (x, t)

    def backward(self, dz, dlogdet, cache):
        x, t = cache
        u_hat, m, k = self._constrained()
        dt_da = 1.0 - t * t
        slope = self._slope(t)
        dden = -dlogdet / slope
        ga = -(dz @ u_hat) * dt_da + dden * m * (-2.0 * t * dt_da)
        gs = ga / slope  # the implicit function theorem: da/ds = 1 / slope
        self.grads["b"] += gs.sum()
        self.grads["w"] += x.T @ gs
        self._constraint_backward(-(t @ dz), dden @ dt_da - gs @ t, m, k)
        return dz + gs[:, None] * self.params["w"]

    def __repr__(self):
        return f"Planar(dim={self.dim})"


class Radial(Bijector):
    r"""Radial flow, with the constraint ``beta > -alpha`` that makes it invertible.

    Sampling direction (the paper's f; our ``inverse``), ``z`` (N, D) -> ``x`` (N, D):

        alpha = softplus(alpha_raw) > 0,    beta = -alpha + softplus(beta_raw) > -alpha
        y = z - z0,   r = ||y||,   h = 1 / (alpha + r),   q = 1 + beta h,   p = 1 + beta alpha h^2
        x = z0 + q * y
    Inverse log-det:  (D - 1) log q + log p      (q > 0 and p > 0 because beta > -alpha)

    Normalizing direction (our ``forward``), ``x`` -> ``z``: ``x - z0`` points along ``y``
    (q > 0), so only the radius is unknown: with v = x - z0, rho = ||v||, the radius solves
    rho = r q(r) = r + beta r / (alpha + r), i.e. the quadratic

        G(r) = r^2 + (alpha + beta - rho) r - alpha rho = 0,

    whose one non-negative root is taken in the cancellation-free form
    (c = alpha + beta - rho, S = sqrt(c^2 + 4 alpha rho)):  r = (S - c) / 2 if c < 0, else
    r = 2 alpha rho / (S + c).  Then ``z = z0 + v / q``.
    Forward log-det:  -(D - 1) log q - log p

    Cost: both directions O(N D): the 1-D root along the ray from z0 is a closed form here.

    Inverse backward (``dx``, ``dlogdet`` given):
        dq = sum_j dx_j y_j + (D - 1) dlogdet / q;   dp = dlogdet / p
        dh = dq beta + dp 2 beta alpha h;   dr = -dh h^2
        dy = q dx + dr y / r;   dz = dy;   dz0 = sum_n (dx - dy)_n
        dbeta = sum_n (dq h + dp alpha h^2);   dalpha = sum_n (dp beta h^2 - dh h^2)
    Backward (``dz``, ``dlogdet`` given; implicit function theorem on G, G_r = S > 0):
        dv = dz / q;   dq = -sum_j dz_j y_j / q - (D - 1) dlogdet / q;   dp = -dlogdet / p
        dh, dr, and the dalpha, dbeta terms from h, q, p as above;   then through r(rho):
        drho = dr (r + alpha) / S;   dalpha += dr (rho - r) / S;   dbeta += -dr r / S
        dv += drho v / rho;   dx = dv;   dz0 = sum_n (dz - dv)_n
    Both: dalpha_raw = (dalpha - dbeta) sigmoid(alpha_raw);  dbeta_raw = dbeta sigmoid(beta_raw).

    At ``z = z0`` the map has a kink (r = ||y|| is not differentiable there): points exactly
    at the centre get no gradient through r.

    Parameters
    ----------
    dim : int
    rng : numpy.random.Generator, for ``z0``, ``alpha_raw``, ``beta_raw`` ~ U(-1/sqrt(D), 1/sqrt(D))

    References
    ----------
    Rezende and Mohamed (2015), Variational inference with normalizing flows,
    arXiv:1505.05770, section 4.1 and appendix A.2.
    """

    def __init__(self, dim, rng=None, dtype=np.float64):
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"Radial: expected a positive dim, got {dim!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.dim = int(dim)
        bound = 1.0 / np.sqrt(dim)
        self.add_param("z0", rng.uniform(-bound, bound, dim).astype(dtype))
        self.add_param("alpha_raw", rng.uniform(-bound, bound, 1).astype(dtype))
        self.add_param("beta_raw", rng.uniform(-bound, bound, 1).astype(dtype))

    def _alpha_beta(self):
        alpha = _softplus(self.params["alpha_raw"][0])
        return alpha, -alpha + _softplus(self.params["beta_raw"][0])

    def _raw_backward(self, dalpha, dbeta):
        self.grads["alpha_raw"] += (dalpha - dbeta) * _sigmoid(self.params["alpha_raw"])
        self.grads["beta_raw"] += dbeta * _sigmoid(self.params["beta_raw"])

    def inverse(self, z):
        z = self._check(z)
        alpha, beta = self._alpha_beta()
        y = z - self.params["z0"]
        r = np.sqrt(np.einsum("nd,nd->n", y, y))
        h = 1.0 / (alpha + r)
        q = 1.0 + beta * h
        p = 1.0 + beta * alpha * h * h
        x = self.params["z0"] + q[:, None] * y
        return x, (self.dim - 1) * np.log(q) + np.log(p), (y, r)

    def _scalars_backward(self, dq, dp, r, alpha, beta):
        """(dh, dalpha, dbeta) through h = 1/(alpha + r), q = 1 + beta h, p = 1 + beta alpha h^2."""
        h = 1.0 / (alpha + r)
        dh = dq * beta + dp * 2.0 * beta * alpha * h
        dbeta = dq @ h + dp @ (alpha * h * h)
        dalpha = dp @ (beta * h * h) - dh @ (h * h)
        return dh, h, dalpha, dbeta

    def inverse_backward(self, dx, dlogdet, cache):
        y, r = cache
        alpha, beta = self._alpha_beta()
        h = 1.0 / (alpha + r)
        q = 1.0 + beta * h
        p = 1.0 + beta * alpha * h * h
        dq = np.einsum("nd,nd->n", dx, y) + (self.dim - 1) * dlogdet / q
        dp = dlogdet / p
        dh, h, dalpha, dbeta = self._scalars_backward(dq, dp, r, alpha, beta)
        dr = -dh * h * h
        safe_r = np.where(r > 0, r, 1.0)
        dy = q[:, None] * dx + np.where(r > 0, dr / safe_r, 0.0)[:, None] * y
        self.grads["z0"] += (dx - dy).sum(axis=0)
        self._raw_backward(dalpha, dbeta)
        return dy

    def forward(self, x):
        x = self._check(x)
        alpha, beta = self._alpha_beta()
        v = x - self.params["z0"]
        rho = np.sqrt(np.einsum("nd,nd->n", v, v))
        c = alpha + beta - rho
        root = np.sqrt(c * c + 4.0 * alpha * rho)
        r = np.where(c < 0, 0.5 * (root - c), 2.0 * alpha * rho / (root + np.abs(c)))
        h = 1.0 / (alpha + r)
        q = 1.0 + beta * h
        p = 1.0 + beta * alpha * h * h
        y = v / q[:, None]
        z = self.params["z0"] + y
        return z, -(self.dim - 1) * np.log(q) - np.log(p), (v, y, rho, r, root)

    def backward(self, dz, dlogdet, cache):
        v, y, rho, r, root = cache
        alpha, beta = self._alpha_beta()
        h = 1.0 / (alpha + r)
        q = 1.0 + beta * h
        p = 1.0 + beta * alpha * h * h
        dq = -np.einsum("nd,nd->n", dz, y) / q - (self.dim - 1) * dlogdet / q
        dp = -dlogdet / p
        dh, h, dalpha, dbeta = self._scalars_backward(dq, dp, r, alpha, beta)
        dr = -dh * h * h
        # the implicit function theorem on G(r; rho, alpha, beta) = 0, with dG/dr = root
        drho = dr * (r + alpha) / root
        dalpha += dr @ ((rho - r) / root)
        dbeta -= dr @ (r / root)
        safe_rho = np.where(rho > 0, rho, 1.0)
        dv = dz / q[:, None] + np.where(rho > 0, drho / safe_rho, 0.0)[:, None] * v
        self.grads["z0"] += (dz - dv).sum(axis=0)
        self._raw_backward(dalpha, dbeta)
        return dv

    def __repr__(self):
        return f"Radial(dim={self.dim})"


# ------------------------------------------------------------------ the gradcheck registry
def _planar_inputs(layer, n, rng):
    r"""Standard normal points moved along ``w`` so that their pre-activation
    ``s = x @ w + b`` is N(0, 1): the region where tanh is not saturated.

    Why not plain standard normal points: with ``w`` and ``b`` moved off their initial values,
    every example of a batch can have |s| > 5, where t' = 1 - tanh^2 < 2e-4. The layer is then
    a constant shift, the gradient of the scalar ``b`` (a sum of t' terms) is 1e-5 of the
    loss's scale or less, and its relative error measures the round-off of the central
    differences (about 1e-16 |L| / eps), not the layer: at 100 draws per layer one such draw
    gave db = 4.1e-5 with a rel_error of 5.4e-6 at eps = 1e-6, and 1.2e-8 at eps = 1e-4.
    """
    w, b = layer.params["w"], layer.params["b"][0]
    x = rng.standard_normal((n, layer.dim))
    s = x @ w + b
    return x + np.outer(rng.standard_normal(n) - s, w) / (w @ w)


register("Planar", lambda d, r: Planar(d, rng=r), inputs=_planar_inputs)
register("Radial", lambda d, r: Radial(d, rng=r))
