r"""Continuous normalizing flows (Chen et al. 2018; FFJORD, Grathwohl et al. 2019).

The map is the solution of an ODE: a point follows a learned, time-dependent vector field
``v(x, t)`` from ``t = 0`` (data) to ``t = 1`` (noise),

    dx/dt = v(x(t), t),   x(0) = x,   z = x(1).

Along the path the log-determinant changes by the trace of the field's Jacobian (the
"instantaneous change of variables", Chen et al. 2018, theorem 1): for the Jacobian
J(t) = dx(t)/dx(0), dJ/dt = (dv/dx) J, and Jacobi's formula gives

    d/dt log|det J(t)| = tr(dv/dx (x(t), t)),

so ``log|det dz/dx| = int_0^1 tr(dv/dx) dt``, integrated together with x as one augmented
state [x, logdet] (the last column). The inverse integrates the same ODE back from t = 1
to t = 0; its logdet, the same integral run backwards, is minus the forward one.

This file holds the two pieces of the family, each with its hand-written derivatives:

* ``TimeField``: the vector field, an MLP of (x, t) (t concatenated as an extra input) with
  tanh activations; its VJP, its Jacobian-vector products in forward mode, and from them
  the exact trace (D tangents) or Hutchinson's estimate (one random tangent), with the VJP
  of the trace (which needs tanh's second derivative). It lives here rather than in ``nn``
  because the trace and its gradient are what only a continuous flow asks of a network;
* ``CNF``: the bijector, RK4 with a fixed number of steps (``ode.rk4``) and backpropagation
  through those steps (``ode.rk4_step_backward``): the exact gradient of the discrete map
  the forward pass computes ("discretise-then-optimise"); or, with ``gradient="adjoint"``,
  the adjoint method (``cnf_adjoint_backward``): the continuous flow's gradient from one more
  ODE solved backwards, O(1) memory in the steps, within the solver's error (O(h^4) for RK4,
  about the tolerance for dopri5; tests/test_cnf_adjoint.py). The registry checks the
  default, whose gradients are exact for the discrete map.

The discrete map is what the registry checks too, and there the fixed step shows: the RK4
inverse is RK4 run backwards, not the exact inverse of the RK4 forward map, and the RK4
integral of the trace is not exactly log|det| of the RK4 map's Jacobian. The log-det's error
is O(h^4), h = 1 / n_steps, RK4's order; the round trip's is O(h^5), since a step's leading
local error C h^5 changes sign with h and the inverse's step -h undoes it to leading order
(see the registration at the end of the file, and tests/test_cnf.py).
"""
from functools import partial

import numpy as np

from ..core import Bijector, Module, check_array
from ..gradcheck import randomize_parameters, register
from ..nn import MLP, Sine
from ..ode import dopri5, rk4, rk4_step_backward


def tanh_derivatives(a):
    r"""y = tanh(a), y' = 1 - y^2 and y'' = -2 y (1 - y^2), elementwise (y' and y'' written
    with y, which the forward pass has already computed)."""
    y = np.tanh(a)
    d1 = 1 - y**2
    return y, d1, -2 * y * d1


class TimeField(Module):
    r"""A time-dependent vector field ``v(x, t)``: an MLP of the input [x, t] with tanh (or
    sine) activations.

    Forward:  h_0 = [x, t]  (N, D + 1);   a_k = h_{k-1} @ W_k + b_k;   h_k = tanh(a_k)  (k < K);
              v = a_K  (N, D)
    Backward (VJP): ``nn.MLP``'s backward, keeping the x part of d[x, t].

    Jacobian-vector products in forward mode (``jvp_forward``): tangents V (N, m, D) at x
    (t's tangent is 0, so the first layer uses only the x rows W_1[:D] of W_1):
              T_0 = V;   M_k = T_{k-1} @ W_k  (W_1[:D] for k = 1);   T_k = M_k * d1_k;
              G = M_K  (N, m, D),  so G[n, r] = J_n V[n, r],  J_n = dv/dx at example n
    with d1_k = tanh'(a_k) = 1 - h_k^2 and d2_k = tanh''(a_k) = -2 h_k d1_k
    (``tanh_derivatives``). With ``activation="sine"`` every tanh above is
    phi(a) = sin(2 pi a) / (2 pi), d1 = cos(2 pi a), d2 = -2 pi sin(2 pi a) (``nn.Sine``):
    periodic units draw the sharp edges of a density (the checkerboard's squares) that a tanh
    field blurs.

    Trace (``trace_forward``): tr = sum_{r, i} V[n, r, i] G[n, r, i], that is
              V = I (m = D, the D JVP passes as one batched pass): tr = sum_i J_ii, exact;
              V = eps[:, None, :] (m = 1, one pass): eps^T J eps, Hutchinson's estimate
              (E[eps eps^T] = I for standard normal or Rademacher eps, so E[eps^T J eps] = tr J).
    Trace backward (``trace_backward``): dG = dtr[:, None, None] * V, then reverse mode
    through both the value and the tangent paths (``jvp_backward``):
              dM_k = dT_k * d1_k;   dd1_k = sum_r dT_k[:, r] * M_k[:, r]   (T_k = M_k * d1_k)
              da_k = dh_k * d1_k + dd1_k * d2_k
              dW_k = h_{k-1}^T da_k + (rows :D for k = 1) sum_{n, r} T_{k-1}[n, r]^T dM_k[n, r]
              db_k = sum_n da_k;   dh_{k-1} = da_k @ W_k^T;   dT_{k-1} = dM_k @ W_k^T
              dx = dh_0[:, :D]

    Parameters
    ----------
    dim : int, D
    hidden : sequence of int, the hidden widths
    rng : numpy.random.Generator
    dtype : float dtype of the parameters
    activation : ``"tanh"`` or ``"sine"``

    Shapes: x (N, D), t a float or (N,) (``forward`` and ``jvp_forward``: one time per
    example), v (N, D), V (N, m, D), G (N, m, D), tr (N,). The parameters
    are those of ``self.net``, an ``nn.MLP((D + 1, *hidden, D), activation)``.

    References: Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud (2019), "FFJORD",
    arXiv:1810.01367, section 3.1 (the Hutchinson estimator); Hutchinson (1989), Commun.
    Stat. Simul. Comput. 18(3).
    """

    ACTIVATIONS = {"tanh": tanh_derivatives, "sine": Sine().derivatives}

    def __init__(self, dim, hidden=(64, 64), rng=None, dtype=np.float64, activation="tanh"):
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"TimeField: expected a positive integer dim, got {dim!r}")
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"TimeField: expected activation in {tuple(self.ACTIVATIONS)}, got "
                             f"{activation!r}")
        self.dim, self.activation = int(dim), activation
        self.net = MLP((self.dim + 1, *hidden, self.dim), activation, rng=rng, dtype=dtype)

    def derivatives(self, a):
        """(phi(a), phi'(a), phi''(a)) elementwise for the field's activation."""
        return self.ACTIVATIONS[self.activation](a)

    def _input(self, x, t):
        """[x, t]: t as one more column, one time for every example (a scalar t, as the ODE
        solver passes) or one per example (t of shape (N,), as flow matching draws them)."""
        t = np.broadcast_to(np.asarray(t, dtype=x.dtype).reshape(-1, 1), (x.shape[0], 1))
        return np.concatenate([x, t], axis=1)

    def _check(self, x, t):
        x = check_array(x, "TimeField", self.dim)
        if not (np.ndim(t) == 0 or np.shape(t) == (x.shape[0],)) or not np.isfinite(t).all():
            raise ValueError(f"TimeField: expected a finite time t, a scalar or one per example "
                             f"(shape ({x.shape[0]},)), got {t!r}")
        return x

    def forward(self, x, t):
        """v(x, t) (N, D) and the cache of ``backward``."""
        x = self._check(x, t)
        return self.net._forward(self._input(x, t))

    def backward(self, dv, cache):
        """VJP: dv (N, D) -> dx (N, D); adds the parameter gradients."""
        return self.net.backward(dv, cache)[:, :self.dim]

    # ------------------------------------------------------------------ forward mode
    def _linears(self):
        return self.net.layers[0::2]   # Linear, Tanh, Linear, ..., Linear

    def jvp_forward(self, x, t, V):
        r"""v(x, t) (N, D), G (N, m, D) with G[n, r] = J_n V[n, r], and the cache."""
        n, m = V.shape[0], V.shape[1]
        h, T = self._input(x, t), V
        caches = []
        linears = self._linears()
        for k, layer in enumerate(linears):
            W = layer.params["W"]
            W_in = W[:self.dim] if k == 0 else W      # t has no tangent
            a = h @ W + layer.params["b"]
            # (N, m, I) -> (N m, I): one BLAS product for all tangents
            M = (T.reshape(n * m, -1) @ W_in).reshape(n, m, -1)
            if k == len(linears) - 1:
                caches.append((h, T, None, None, M))
                return a, M, caches
            y, d1, d2 = self.derivatives(a)   # tanh_derivatives(a) for tanh
            caches.append((h, T, d1, d2, M))
            h, T = y, M * d1[:, None, :]

    def jvp_backward(self, dv, dG, caches):
        r"""Reverse mode through ``jvp_forward``, upstream dv (N, D) and dG (N, m, D): returns
        dx (N, D) and adds the parameter gradients."""
        dh, dT = dv, dG
        linears = self._linears()
        for k in reversed(range(len(linears))):
            h, T, d1, d2, M = caches[k]   # d1, d2: phi'(a_k), phi''(a_k)
            layer = linears[k]
            if k == len(linears) - 1:
                da, dM = dh, dT
            else:
                dM = dT * d1[:, None, :]
                dd1 = np.einsum("nro,nro->no", dT, M)  # the gradient reaching d1 = tanh'(a)
                da = dh * d1 + dd1 * d2
            W = layer.params["W"]
            dW_T = T.reshape(-1, T.shape[2]).T @ dM.reshape(-1, dM.shape[2])
            layer.grads["W"] += h.T @ da
            if k == 0:
                layer.grads["W"][:self.dim] += dW_T
            else:
                layer.grads["W"] += dW_T
            layer.grads["b"] += da.sum(axis=0)
            dh = da @ W.T
            if k > 0:  # the tangents start at the constant V: nothing to pass below layer 1
                dT = (dM.reshape(-1, dM.shape[2]) @ W.T).reshape(dM.shape[0], dM.shape[1], -1)
        return dh[:, :self.dim]

    # ------------------------------------------------------------------ the trace
    def trace_forward(self, x, t, V=None):
        r"""v (N, D), tr (N,) and the cache: the exact tr(dv/dx) when ``V`` is None (V = I,
        D tangents), otherwise sum_r V[n, r]^T J_n V[n, r] (Hutchinson with V (N, 1, D)).

        Like ``jvp_forward``, no input check (the ODE solver calls it at every stage; the
        ``CNF`` checks its own input, ``forward`` checks this one's)."""
        if V is None:
            V = np.broadcast_to(np.eye(self.dim, dtype=x.dtype), (x.shape[0], self.dim, self.dim))
        v, G, caches = self.jvp_forward(x, t, V)
        return v, np.einsum("nri,nri->n", V, G), (caches, V)

    def trace_backward(self, dv, dtr, cache):
        """VJP of ``trace_forward``: (dv (N, D), dtr (N,)) -> dx (N, D); adds the parameter
        gradients."""
        caches, V = cache
        return self.jvp_backward(dv, dtr[:, None, None] * V, caches)

    def __repr__(self):
        return f"TimeField(dim={self.dim}, net={self.net!r})"


def hutchinson_probes(n, dim, rng, kind="gaussian", dtype=np.float64):
    r"""Random tangents eps (N, 1, D) for ``TimeField.trace_forward``'s Hutchinson estimate,
    with E[eps eps^T] = I: standard normal (``"gaussian"``) or +-1 with probability 1/2 each
    (``"rademacher"``, whose estimate has the smaller variance: Var = 2 sum_{i != j} J_ij^2
    (J's symmetric part) against 2 ||sym J||_F^2 for the Gaussian)."""
    if kind == "gaussian":
        eps = rng.standard_normal((n, 1, dim))
    elif kind == "rademacher":
        eps = rng.choice(np.array([-1.0, 1.0]), size=(n, 1, dim))
    else:
        raise ValueError(f"hutchinson_probes: expected kind 'gaussian' or 'rademacher', got "
                         f"{kind!r}")
    return eps.astype(dtype)


def cnf_adjoint_backward(field, end, dout, dlogdet, t0, t1, n_steps=None, tol=None, V=None):
    r"""The adjoint method (Chen et al. 2018, section 2 and appendix B): the gradients of a
    continuous flow's output by solving one more ODE backwards in time, with no stored path.

    The map: dx/dt = v(x, t) and dl/dt = tr(dv/dx (x, t)) from t0 to t1, x(t0) the input,
    ``end`` = x(t1) the output and l(t1) = int_{t0}^{t1} tr(dv/dx) dt its log-det (t0 = 0,
    t1 = 1 for ``CNF.forward``; t0 = 1, t1 = 0 for ``CNF.inverse``). For the loss
    L = <dout, x(t1)> + <dlogdet, l(t1)>, the adjoint a(t) = dL/dx(t) (N, D) and the
    parameters' running gradient g(t) (P,) solve, from t1 back to t0,

        dx/dt = v(x, t)
        da/dt = -a^T dv/dx - dlogdet * d tr(dv/dx)/dx            (N, D)
        dg/dt = -sum_n [a_n^T dv/dtheta + dlogdet_n d tr(dv/dx)/dtheta]   (P,)

    with x(t1) = ``end``, a(t1) = ``dout``, g(t1) = 0; then dL/dx(t0) = a(t0) and
    dL/dtheta = g(t0) = int_{t0}^{t1} [a^T dv/dtheta + dlogdet d tr/dtheta] dt. The adjoint of
    l is constant (F = [v, tr] does not depend on l), which is why dlogdet multiplies the
    trace terms at every t. Both right-hand sides come from one ``TimeField.trace_backward``
    with upstream (dv, dtr) = (a, dlogdet): it returns a^T dv/dx + dlogdet d tr/dx and leaves
    a^T dv/dtheta + dlogdet d tr/dtheta in the field's gradients (tanh'' enters there). The
    formulas hold for t1 < t0 too (the inverse): the same ODE, integrated the other way.

    x(t) is re-solved backwards from ``end`` along with a and g, so memory is O(1) in the
    number of steps; the price is that the gradient is that of the continuous map only up to
    the backward solve's error (and the re-solved x(t) drifts from the forward one by the
    forward and backward solves' errors), not the exact gradient of the discrete forward map.

    Parameters
    ----------
    field : TimeField
    end : ndarray (N, D), x(t1)
    dout : ndarray (N, D), dL/dx(t1)
    dlogdet : ndarray (N,), dL/dl(t1)
    t0, t1 : float, the forward map's start and end times
    n_steps : int, fixed RK4 steps from t1 back to t0 (used when ``tol`` is None)
    tol : (rtol, atol) or None, solve with ``ode.dopri5`` at these tolerances instead
    V : ndarray (N, 1, D) or None, the forward's Hutchinson probes (None: the exact trace)

    Returns
    -------
    dx : ndarray (N, D), a(t0)
    start : ndarray (N, D), the re-solved x(t0) (to compare with the forward's input)
    nfe : int, evaluations of the augmented field (each one trace_forward and trace_backward)

    Adds g(t0) to the field's parameter gradients (as every backward pass does); the
    gradients already there are kept.
    """
    n, d = end.shape
    grads = [g for _, _, g in field.parameters()]
    kept = [g.copy() for g in grads]           # trace_backward adds: zero between evaluations

    def unpack(s):
        return s[:n * d].reshape(n, d), s[n * d:2 * n * d].reshape(n, d), s[2 * n * d:]

    def dynamics(t, s):
        x, a, _ = unpack(s)
        v, _, cache = field.trace_forward(x, t, V)
        field.zero_grad()
        a_dx = field.trace_backward(a, dlogdet, cache)   # a^T dv/dx + dlogdet d tr/dx
        return np.concatenate([v.ravel(), -a_dx.ravel()] + [-g.ravel() for g in grads])

    s1 = np.concatenate([end.ravel(), dout.ravel(),
                         np.zeros(sum(g.size for g in grads), dtype=end.dtype)])
    if tol is None:
        s0, nfe = rk4(dynamics, s1, t1, t0, n_steps)
    else:
        s0, nfe = dopri5(dynamics, s1, t1, t0, rtol=tol[0], atol=tol[1])
    start, dx, g0 = unpack(s0)
    offsets = np.cumsum([g.size for g in grads])[:-1]
    for g, old, piece in zip(grads, kept, np.split(g0, offsets)):
        g[...] = old + piece.reshape(g.shape)
    return dx, start, nfe


class CNF(Bijector):
    r"""Continuous normalizing flow, integrated with fixed-step RK4 and the exact trace.

    Augmented state y = [x, l] (N, D + 1), field F(t, y) = [v(x, t), tr(dv/dx (x, t))]:

    Forward:  y(0) = [x, 0];  y(1) = RK4 of dy/dt = F(t, y) from t = 0 to 1 in ``n_steps``
              steps;  z = y(1)[:, :D],  logdet = y(1)[:, D]  (= int_0^1 tr(dv/dx) dt, the
              log|det dz/dx| up to the O(h^4) error of the quadrature)
    Inverse:  the same from y(1) = [z, 0] back to t = 0 (steps of -h):  x = y(0)[:, :D],
              logdet = y(0)[:, D] = -int_0^1 tr(dv/dx) dt  (log|det dx/dz|)
    Backward (discretise-then-optimise): with y_k the states at the step boundaries (kept in
              the cache), dy_n = [dz, dlogdet] and, for k = n - 1, ..., 0,
                  dy_k = (VJP of the RK4 step from y_k)(dy_{k+1})    (``rk4_step_backward``)
              which recomputes the step's four stages and backpropagates through each field
              evaluation with ``TimeField.trace_backward``; dx = dy_0[:, :D]. F does not
              depend on l, so the l column of dy stays dlogdet all the way.
    Inverse backward: the same through the inverse's steps.

    The gradients are exact for the discrete map (they match its central differences to
    round-off), so training follows the map the forward pass really computes.

    With ``gradient="adjoint"`` the forward pass keeps only its two ends, and the backward
    pass is ``cnf_adjoint_backward``: the adjoint ODE for a(t) = dL/dx(t) and the parameter
    gradient, solved from z back to t = 0 together with x(t), by RK4 in ``n_steps`` steps or
    by dopri5 at ``adjoint_tol``. Memory O(1) in the number of steps; the gradient is that of
    the continuous flow within the solvers' error (O(h^4), or about the tolerance), not the
    exact gradient of the discrete map (tests/test_cnf_adjoint.py measures both).

    Parameters
    ----------
    dim : int, D
    hidden : sequence of int, the field's hidden widths
    activation : the field's, ``"tanh"`` or ``"sine"`` (``TimeField``)
    n_steps : int, RK4 steps from t = 0 to 1 (4 n_steps evaluations of the field, each
        with D tangents for the trace)
    rng : numpy.random.Generator, for the initialisation and Hutchinson's probes
    dtype : float dtype of the parameters
    trace : ``"exact"`` (D tangents per evaluation, the default) or ``"hutchinson"``
        (FFJORD's estimator in training mode: one Rademacher probe eps per example, drawn
        from ``rng`` at each call and kept for the whole solve, tr ~ eps^T (dv/dx) eps, one
        tangent per evaluation whatever D; an unbiased estimate of the log-det, whose
        gradient is the exact gradient of that estimate). Evaluation mode (``eval()``)
        always takes the exact trace, so ``log_prob`` is the density and deterministic
    gradient : ``"discrete"`` (backpropagate through the RK4 steps, the default) or
        ``"adjoint"`` (``cnf_adjoint_backward``)
    adjoint_tol : (rtol, atol) or None; with ``gradient="adjoint"``, solve the adjoint ODE
        with dopri5 at these tolerances instead of RK4 in ``n_steps`` steps

    Shapes: x, z (N, D); logdet (N,). Cache: ``{"states": [y_0, ..., y_n] (N, D + 1) each,
    "t0", "t1", "nfe", "V"}``, V the Hutchinson probes (N, 1, D) or None for the exact trace;
    with the adjoint, ``{"ends": (input, output) (N, D) each, "t0", "t1", "nfe", "V"}``, to
    which the backward pass adds ``"nfe_backward"`` and
    ``"reconstruction_error"`` (max |re-solved x(t0) - input|, the backward solve's drift).

    References: Chen, Rubanova, Bettencourt, Duvenaud (2018), "Neural Ordinary Differential
    Equations", arXiv:1806.07366, section 4 (theorem 1); Grathwohl, Chen, Bettencourt,
    Sutskever, Duvenaud (2019), "FFJORD", arXiv:1810.01367; Gholami, Keutzer, Biros (2019),
    "ANODE", arXiv:1902.10298 (discretise-then-optimise against the adjoint).
    """

    GRADIENTS = ("discrete", "adjoint")
    TRACES = ("exact", "hutchinson")

    def __init__(self, dim, hidden=(64, 64), n_steps=8, rng=None, dtype=np.float64,
                 gradient="discrete", adjoint_tol=None, trace="exact", activation="tanh"):
        super().__init__()
        if int(n_steps) != n_steps or n_steps < 1:
            raise ValueError(f"CNF: expected a positive integer n_steps, got {n_steps!r}")
        if gradient not in self.GRADIENTS:
            raise ValueError(f"CNF: expected gradient in {self.GRADIENTS}, got {gradient!r}")
        if trace not in self.TRACES:
            raise ValueError(f"CNF: expected trace in {self.TRACES}, got {trace!r}")
        if adjoint_tol is not None:
            if gradient != "adjoint":
                raise ValueError("CNF: adjoint_tol is for gradient='adjoint'")
            if len(adjoint_tol) != 2 or not all(np.isfinite(v) and v > 0 for v in adjoint_tol):
                raise ValueError(f"CNF: expected adjoint_tol = (rtol, atol), both positive, got "
                                 f"{adjoint_tol!r}")
            adjoint_tol = tuple(float(v) for v in adjoint_tol)
        self.dim, self.n_steps = int(dim), int(n_steps)
        self.gradient, self.adjoint_tol, self.trace = gradient, adjoint_tol, trace
        self.rng = np.random.default_rng() if rng is None else rng
        self.field = TimeField(self.dim, hidden, self.rng, dtype, activation)

    # ------------------------------------------------------------------ the augmented ODE
    def _probes(self, x):
        """Hutchinson's probes V (N, 1, D) for this call (training mode with
        ``trace="hutchinson"``), else None: the exact trace."""
        if self.trace == "exact" or not self.training:
            return None
        return hutchinson_probes(x.shape[0], self.dim, self.rng, "rademacher", x.dtype)

    def _augmented_cached(self, t, y, V=None):
        """F(t, y) = [v, tr(dv/dx)] (N, D + 1) and the field's cache; the trace exact, or
        Hutchinson's with the probes V (N, 1, D)."""
        v, tr, cache = self.field.trace_forward(y[:, :self.dim], t, V)
        return np.concatenate([v, tr[:, None]], axis=1), cache

    def _augmented(self, t, y, V=None):
        return self._augmented_cached(t, y, V)[0]

    def _augmented_backward(self, dF, cache):
        """VJP of F with respect to y = [x, l]: F does not depend on l (a zero column)."""
        dx = self.field.trace_backward(dF[:, :self.dim], dF[:, self.dim], cache)
        return np.concatenate([dx, np.zeros_like(dF[:, self.dim:])], axis=1)

    def _integrate(self, x, t0, t1):
        y0 = np.concatenate([x, np.zeros((x.shape[0], 1), dtype=x.dtype)], axis=1)
        V = self._probes(x)
        F = partial(self._augmented, V=V)
        if self.gradient == "adjoint":   # keep the ends only: O(1) memory in n_steps
            y1, nfe = rk4(F, y0, t0, t1, self.n_steps)
            out = y1[:, :self.dim]
            return out, y1[:, self.dim], dict(ends=(x, out), t0=t0, t1=t1, nfe=nfe, V=V)
        y1, nfe, states = rk4(F, y0, t0, t1, self.n_steps, return_states=True)
        return y1[:, :self.dim], y1[:, self.dim], dict(states=states, t0=t0, t1=t1, nfe=nfe,
                                                       V=V)

    def _adjoint_backward(self, dout, dlogdet, cache):
        start, end = cache["ends"]
        dx, start_again, nfe = cnf_adjoint_backward(
            self.field, end, dout, dlogdet, cache["t0"], cache["t1"], self.n_steps,
            self.adjoint_tol, cache.get("V"))
        cache["nfe_backward"] = nfe
        cache["reconstruction_error"] = float(np.abs(start_again - start).max())
        return dx

    # ------------------------------------------------------------------ the contract
    def forward(self, x):
        r"""z, logdet and the cache: y(0) = [x, 0] integrated by ``n_steps`` RK4 steps from
        t = 0 to 1 (``ode.rk4``), keeping the states at the step boundaries for ``backward``.

        Written out here rather than through ``_integrate`` (which the inverse and the adjoint
        option use) so that the discrete forward pass is one method (the exercise
        ``CNF.forward``)."""
        x = self._check(x)
        if self.gradient == "adjoint":
            return self._integrate(x, 0.0, 1.0)
        V = self._probes(x)   # None: the exact trace
        F = partial(self._augmented, V=V)
        y0 = np.concatenate([x, np.zeros((x.shape[0], 1), dtype=x.dtype)], axis=1)
        y1, nfe, states = rk4(F, y0, 0.0, 1.0, self.n_steps, return_states=True)
        return y1[:, :self.dim], y1[:, self.dim], dict(states=states, t0=0.0, t1=1.0, nfe=nfe,
                                                       V=V)

    def inverse(self, z):
        return self._integrate(self._check(z), 1.0, 0.0)

    def backward(self, dz, dlogdet, cache):
        r"""dx: the VJP of the RK4 steps of ``forward``, from the last step to the first
        (``ode.rk4_step_backward`` on each stored state), starting from dy_n = [dz, dlogdet].
        The steps run from the cache's t0 to t1 (0 to 1 for ``forward``), so the same code is
        the inverse's VJP with the inverse's cache (1 to 0).

        Written out here, like ``forward``, so that it is one method (the exercise
        ``CNF.backward``); the adjoint option goes through ``_adjoint_backward``."""
        if self.gradient == "adjoint":
            return self._adjoint_backward(dz, dlogdet, cache)
        states, t0 = cache["states"], cache["t0"]
        h = (cache["t1"] - t0) / self.n_steps
        F = partial(self._augmented_cached, V=cache.get("V"))   # the forward's probes, if any
        dy = np.concatenate([dz, dlogdet[:, None]], axis=1)
        for k in reversed(range(self.n_steps)):
            dy = rk4_step_backward(F, self._augmented_backward, t0 + k * h, states[k], h, dy)
        return dy[:, :self.dim]

    def inverse_backward(self, dx, dlogdet, cache):
        # the library's backward by name: a student's CNF.backward is graded on its own
        return CNF.backward(self, dx, dlogdet, cache)

    def __repr__(self):
        adjoint = "" if self.gradient == "discrete" else (
            f", gradient='adjoint', adjoint_tol={self.adjoint_tol}")
        trace = "" if self.trace == "exact" else ", trace='hutchinson'"
        return (f"CNF(dim={self.dim}, n_steps={self.n_steps}{adjoint}{trace}, "
                f"field={self.field.net!r})")


# ------------------------------------------------------------------ the gradcheck registry
REGISTRY_STEPS = 8


def _randomize_field(layer, rng, scale):
    r"""Move the field's parameters off their initialisation by ``0.3 * scale * N(0, 1)``:
    enough to move every point and give a log-det of order 0.1-1 (the weights start at
    U(-1/sqrt(I), 1/sqrt(I)), about 0.3), while keeping RK4's O(h^4) error at 8 steps within
    the registration's bars. With the default perturbation (up to N(0, 1) on every weight)
    the field is several times steeper and 8 steps leave round-trip errors of 1e-2."""
    return randomize_parameters(layer, rng, 0.3 * scale)


# Measured at 8 steps over 80 draws of the registry's sizes (D <= 4, N <= 64, seeds 0 and
# 123 of check_all): round trip median 1e-9, worst 3e-7; log-det median 1e-8, worst 7e-6
# (tests/test_cnf.py shows they fall as h^5 and h^4). The bars leave a margin of 30 and 14
# over the worst; a wrong sign or stage gives errors of 1e-3 to 1. The shared bars, 1e-10 and
# 1e-7, take about 40 steps: at 32, 19 of 20 draws passed (worst round trip 1.1e-10) and the
# checks cost 4 times as much.
register("CNF", lambda d, r: CNF(d, hidden=(8, 8), n_steps=REGISTRY_STEPS, rng=r),
         randomize=_randomize_field, max_dim=4,
         tolerances=dict(roundtrip=1e-5, logdet=1e-4),
         reason=f"RK4 with {REGISTRY_STEPS} fixed steps: the inverse is RK4 run backwards, not "
                "the exact inverse of the forward map, and the RK4 integral of the trace is not "
                "exactly log|det| of that map's Jacobian: errors O(h^5) and O(h^4) "
                "(tests/test_cnf.py checks the orders). The gradients are exact for the "
                "discrete map and held to the usual 1e-6.")
