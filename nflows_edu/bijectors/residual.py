r"""Invertible residual blocks: i-ResNet and Residual Flows.

A residual block ``z = x + g(x)`` is invertible when ``g`` is a contraction, ``Lip(g) <= c < 1``
(Banach's fixed-point theorem: ``x <- z - g(x)`` converges to the unique solution at rate
``c^k``). ``g`` is a ``LipschitzMLP``: spectrally normalised layers, 1-Lipschitz activations.

The log-determinant ``log det(I + J_g(x))`` has no structure to exploit; it is computed

- exactly (``logdet="exact"``): ``J_g`` by forward-mode propagation of the D unit vectors
  through the MLP, then ``slogdet``; costs O(D) more than evaluating g, so for small D;
- by the power series  ``log det(I + J) = sum_{k>=1} (-1)^(k+1) tr(J^k) / k``  (converges
  because ||J|| <= c < 1), each trace by Hutchinson's estimator ``tr(A) = E[v^T A v]``:
  truncated after ``n_terms`` terms (``"series"``, i-ResNet: biased by the tail) or with a
  random number of terms reweighted so the estimate is unbiased (``"roulette"``, Residual
  Flows' Russian-roulette estimator).
"""
import numpy as np

from ..core import Bijector
from ..gradcheck import randomize_parameters, register
from ..nn import LipschitzMLP, check_lipschitz_bound

LOGDET_MODES = ("exact", "series", "roulette")
EXACT_MAX_DIM = 16  # evaluation uses the exact log-det up to this D (slogdet of D x D)
SOLVERS = ("fixed_point", "anderson")


class ConvergenceError(ValueError):
    """A fixed-point or root-finding inverse did not reach its tolerance within its iteration
    limit (or left the finite numbers). The message says what to change."""


# ------------------------------------------------------------------ solving x + g(x) = y
def fixed_point(g_value, y, tol, max_iter, where):
    r"""Solve ``x + g(x) = y`` by Banach iteration  ``x_{k+1} = y - g(x_k)``, ``x_0 = y - g(y)``.

    Stops when ``max |x_{k+1} - x_k| <= tol``; then ``|x_{k+1} - x*| <= c/(1-c) tol`` for a
    c-contraction. Returns ``(x, steps)`` with ``steps`` the list of max step sizes (its
    length is the iteration count). Raises ``ConvergenceError`` after ``max_iter`` iterations.
    """
    x = y - g_value(y)
    steps = []
    for _ in range(max_iter):
        x_new = y - g_value(x)
        steps.append(float(np.abs(x_new - x).max()))
        x = x_new
        if not np.isfinite(steps[-1]):
            break
        if steps[-1] <= tol:
            return x, steps
    raise ConvergenceError(
        f"{where}: the fixed-point iteration x <- y - g(x) did not converge to tol={tol:g} "
        f"within max_iter={max_iter} iterations (last step {steps[-1]:.3g}). Raise max_iter, "
        f"loosen tol, or lower c: the error shrinks like c^k, slowly for c near 1 "
        f"(solver='anderson' needs far fewer iterations).")


def anderson(g_value, y, tol, max_iter, where, memory=5, reg=1e-10):
    r"""Solve ``x + g(x) = y`` by Anderson acceleration of the map ``G(x) = y - g(x)``.

    Keeps the last ``m = memory`` iterates x_i and residuals r_i = G(x_i) - x_i and takes
    ``x_{k+1} = sum_i alpha_i G(x_i)`` with the weights alpha (summing to 1) that minimise
    ``||sum_i alpha_i r_i||``: one small (m + 1) x (m + 1) linear system per example, solved
    for the whole batch by one ``np.linalg.solve`` on the stack. Stops when
    ``max |r_k| <= tol`` and returns ``G(x_k)`` (within ``c/(1-c) tol`` of the root).
    Returns ``(x, residuals)``; raises ``ConvergenceError`` after ``max_iter`` iterations.

    References: Anderson (1965), J. ACM 12(4); Walker and Ni (2011), SIAM J. Numer. Anal. 49(4).
    """
    n, d = y.shape
    X = np.zeros((n, memory, d), dtype=y.dtype)   # past iterates x_i
    GX = np.zeros((n, memory, d), dtype=y.dtype)  # G(x_i)
    x = y - g_value(y)
    residuals = []
    for k in range(max_iter):
        gx = y - g_value(x)
        r = gx - x
        residuals.append(float(np.abs(r).max()))
        if not np.isfinite(residuals[-1]):
            break
        if residuals[-1] <= tol:
            return gx, residuals
        X[:, k % memory], GX[:, k % memory] = x, gx
        m = min(k + 1, memory)
        R = GX[:, :m] - X[:, :m]                  # (n, m, d)
        # min ||alpha R|| s.t. sum alpha = 1: the bordered normal equations
        H = np.zeros((n, m + 1, m + 1), dtype=y.dtype)
        H[:, 0, 1:] = H[:, 1:, 0] = 1
        gram = R @ R.transpose(0, 2, 1)
        # Tikhonov term relative to the residuals' own size: near convergence they are ~1e-13
        # and an absolute term would swamp the Gram matrix (alpha -> plain averaging)
        scale = np.trace(gram, axis1=1, axis2=2) / m
        H[:, 1:, 1:] = gram + (reg * scale + 1e-300)[:, None, None] * np.eye(m)
        rhs = np.zeros((n, m + 1), dtype=y.dtype)
        rhs[:, 0] = 1
        alpha = np.linalg.solve(H, rhs[..., None])[:, 1:, 0]     # (n, m)
        x = np.einsum("nm,nmd->nd", alpha, GX[:, :m])
    raise ConvergenceError(
        f"{where}: Anderson-accelerated fixed-point iteration did not converge to tol={tol:g} "
        f"within max_iter={max_iter} iterations (last residual {residuals[-1]:.3g}). Raise "
        f"max_iter, loosen tol, or lower c.")


def default_eval_logdet(dim, logdet):
    """The log-det a residual block evaluates with when not told: exact up to EXACT_MAX_DIM
    features, the training estimator beyond."""
    return "exact" if int(dim) <= EXACT_MAX_DIM else logdet


def _roulette_terms(rng, n_exact, p):
    r"""N = n_exact + K, K ~ Geometric(p) on {0, 1, ...}; returns (N, P(N >= k) for k = 0..N).

    P(N >= k) = 1 for k <= n_exact, (1 - p)^(k - n_exact) beyond.
    """
    n = n_exact + int(rng.geometric(p)) - 1
    k = np.arange(n + 1)
    return n, (1 - p) ** np.maximum(k - n_exact, 0)


class ResidualBlock(Bijector):
    r"""Invertible residual block (i-ResNet; Residual Flows with ``logdet="roulette"``).

    Forward:  z = x + g(x),   g a ``LipschitzMLP`` with Lip(g) <= c < 1
    Inverse:  x = lim x_k,  x_{k+1} = z - g(x_k),  x_0 = z - g(z)   (Banach, rate c^k), or the
              same map with Anderson acceleration (``solver="anderson"``); stops at
              ``tol`` (default 1e-13 in float64, 1e-5 in float32); the iteration count and the
              step sizes are in the cache (``cache["iterations"]``, ``cache["steps"]``).
    Log-det:  log det(I + J_g(x)),  with  G = J_g(x)^T  from ``g.jvp_forward(x, I)``:
              exact:    slogdet(A),  A = I + G
              series:   sum_{k=1}^{n} (-1)^(k+1) v^T J^k v / k            (Hutchinson, v ~ N(0, I))
              roulette: sum_{k=1}^{N} (-1)^(k+1) v^T J^k v / (k P(N >= k)) (N random, unbiased)
              with v^T J^k = u_k^T,  u_0 = v,  u_k = J^T u_{k-1}  (one ``g.vjp`` each).
    Backward: dx = dz + J^T dz + (d/dx of the log-det term);  through ``g.jvp_backward`` with
              dg = dz and
              exact:   dG = dlogdet * A^{-T}    (d log det A / dA = A^{-T})
              series / roulette (Neumann gradient estimator, Chen et al. 2019, eq. 8):
                       d log det(I + J) = tr((I + J)^{-1} dJ) = sum_{k>=0} (-1)^k tr(J^k dJ)
                       ~ w^T dJ v,   w = sum_{k=0}^{n-1} (-1)^k u_k / P(N >= k + 1)
                       so dG = dlogdet * w (tangent v), w held constant.
    Inverse backward (implicit function theorem: x + g(x) = z gives dx/dz = (I + J)^{-1}):
              a = dx + dlogdet * d(-logdet)/dx        (the direct gradient at x)
              dz = (I + J)^{-T} a,  i.e. solve  A dz = a  (exact), or iterate
                   dz <- a - J^T dz  (series / roulette; a contraction too)
              dtheta = (direct log-det term) - (dg/dtheta)^T dz
              The fixed-point iterations are never differentiated.

    Parameters
    ----------
    dim : int
    hidden : sequence of int, hidden widths of g
    c : float in (0, 1), the Lipschitz bound of g
    activation : "lipswish" or "sine"
    logdet : "exact", "series" or "roulette", the log-det in training mode
    eval_logdet : the log-det in evaluation mode (``eval()``); None means "exact" for
        ``dim <= EXACT_MAX_DIM`` (16) and ``logdet`` beyond. A stochastic estimator in
        evaluation mode draws from a generator seeded afresh from ``eval_seed`` at every call,
        so the same batch gives the same numbers (an estimate all the same, whose draws depend
        on a point's row in the batch)
    eval_seed : int, that seed (a buffer, saved with the model; the model builders give each
        block its own). Not drawn from ``rng``, so it leaves the initialisation's stream as
        it was
    n_terms : int, the terms of the truncated series (``"series"``)
    n_exact, p : the roulette's always-computed terms and geometric parameter (``"roulette"``)
    solver : "fixed_point" or "anderson" (the inverse)
    tol, max_iter : the inverse's stopping rule and iteration limit
    power_iterations : int, spectral-norm power-iteration steps run after each backward pass
        (training); 0 keeps u, v fixed (deterministic checks)
    rng : Generator for the initialisation and for the stochastic estimators' draws

    Evaluation mode (``eval()``) is what sampling and density evaluation use: every
    ``SpectralLinear`` of g takes the exact largest singular value of its weights, so
    Lip(g) <= c holds for any parameters (training mode uses the power iteration's estimate),
    and the log-det is ``eval_logdet``: exact for small D, so ``log_prob`` is the density,
    not an estimate of it, and the same input gives the same numbers.

    Shapes: x, z (N, D); logdet (N,).
    References: Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen (2019), "Invertible Residual
    Networks", arXiv:1811.00995; Chen, Behrmann, Duvenaud, Jacobsen (2019), "Residual Flows
    for Invertible Generative Modeling", arXiv:1906.02735.
    """

    def __init__(self, dim, hidden=(64,), c=0.9, activation="lipswish", logdet="exact",
                 n_terms=5, n_exact=2, p=0.5, solver="fixed_point", tol=None, max_iter=2000,
                 power_iterations=1, eval_logdet=None, eval_seed=0, rng=None,
                 dtype=np.float64):
        super().__init__()
        c = check_lipschitz_bound(c, "ResidualBlock")
        eval_logdet = default_eval_logdet(dim, logdet) if eval_logdet is None else eval_logdet
        for name, mode in (("logdet", logdet), ("eval_logdet", eval_logdet)):
            if mode not in LOGDET_MODES:
                raise ValueError(f"ResidualBlock: expected {name} in {LOGDET_MODES}, got "
                                 f"{mode!r}")
        if solver not in SOLVERS:
            raise ValueError(f"ResidualBlock: expected solver in {SOLVERS}, got {solver!r}")
        if not (0 < p < 1) or int(n_terms) < 1 or int(n_exact) < 1 or int(max_iter) < 1:
            raise ValueError(f"ResidualBlock: expected 0 < p < 1 and positive n_terms, n_exact, "
                             f"max_iter; got p={p!r}, n_terms={n_terms!r}, n_exact={n_exact!r}, "
                             f"max_iter={max_iter!r}")
        self.rng = np.random.default_rng() if rng is None else rng
        self.dim, self.c = int(dim), c
        self.g = LipschitzMLP((self.dim, *hidden, self.dim), c, activation, self.rng, dtype)
        self.logdet_mode, self.eval_logdet, self.solver = logdet, eval_logdet, solver
        self.buffers["eval_seed"] = np.array([eval_seed], dtype=np.int64)
        self.n_terms, self.n_exact, self.p = int(n_terms), int(n_exact), float(p)
        self.tol = (1e-13 if np.dtype(dtype) == np.float64 else 1e-5) if tol is None else tol
        self.max_iter, self.power_iterations = int(max_iter), int(power_iterations)

    # ------------------------------------------------------------------ pieces
    def _estimator(self):
        """This call's log-det mode and generator: ``logdet`` and the block's own generator in
        training mode; ``eval_logdet`` and a generator seeded from ``eval_seed`` in
        evaluation mode (the same draws at every call)."""
        if self.training:
            return self.logdet_mode, self.rng
        return self.eval_logdet, np.random.default_rng(int(self.buffers["eval_seed"][0]))

    def _logdet_at(self, x, weights=None):
        r"""g(x), log det(I + J_g(x)) (exact or estimated), and what the VJPs need: the cache
        names the log-det mode this call used (``_estimator``), which the VJPs follow."""
        n, d = x.shape
        mode, rng = self._estimator()
        if mode == "exact":
            eye = np.broadcast_to(np.eye(d, dtype=x.dtype), (n, d, d))
            gx, G, gcache = self.g.jvp_forward(x, eye, weights)
            A = G + np.eye(d, dtype=x.dtype)
            _, logdet = np.linalg.slogdet(A)
            return gx, logdet, dict(mode=mode, gcache=gcache, A=A)
        v = rng.standard_normal((n, d)).astype(x.dtype)
        gx, _, gcache = self.g.jvp_forward(x, v[:, None, :], weights)
        if mode == "series":
            n_terms, prob = self.n_terms, np.ones(self.n_terms + 1)
        else:
            n_terms, prob = _roulette_terms(rng, self.n_exact, self.p)
        u, logdet = v, np.zeros(n, dtype=x.dtype)
        w = v / prob[0]
        for k in range(1, n_terms + 1):
            u = self.g.vjp(u, gcache)                       # u_k = J^T u_{k-1}
            logdet += (-1) ** (k + 1) * np.sum(u * v, axis=1) / (k * prob[k])
            if k < n_terms:
                w = w + (-1) ** k * u / prob[k + 1]
        return gx, logdet, dict(mode=mode, gcache=gcache, w=w, n_terms=n_terms)

    def _logdet_backward(self, dg, dlogdet, lcache):
        """dx through g's value (upstream dg) and the log-det (upstream dlogdet); adds dtheta."""
        if lcache["mode"] == "exact":
            dG = dlogdet[:, None, None] * np.linalg.inv(lcache["A"]).transpose(0, 2, 1)
        else:
            dG = dlogdet[:, None, None] * lcache["w"][:, None, :]
        return self.g.jvp_backward(dg, dG, lcache["gcache"])

    def _solve_adjoint(self, a, lcache):
        """s with (I + J)^T s = a, i.e. (I + G) s = a."""
        if lcache["mode"] == "exact":
            return np.linalg.solve(lcache["A"], a[..., None])[..., 0]
        s, _ = fixed_point(lambda s: self.g.vjp(s, lcache["gcache"]), a, self.tol,
                           self.max_iter, "ResidualBlock.inverse_backward")
        return s

    def _after_backward(self):
        if self.power_iterations:
            self.g.update(self.power_iterations)

    # ------------------------------------------------------------------ the contract
    def forward(self, x):
        x = self._check(x)
        gx, logdet, lcache = self._logdet_at(x)
        return x + gx, logdet, lcache

    def inverse(self, z):
        z = self._check(z)
        solve = fixed_point if self.solver == "fixed_point" else anderson
        weights = self.g.weights()  # once: every iteration evaluates g at the same parameters
        where = f"{type(self).__name__}.inverse"
        if self.training:  # say where a failure may come from
            where += (" (in training mode, whose Lipschitz bound is the power iteration's "
                      "estimate: after the weights move, flow.eval() uses the exact one)")
        x, steps = solve(lambda x: self.g.value(x, weights), z, self.tol, self.max_iter, where)
        _, logdet, lcache = self._logdet_at(x, weights)
        return x, -logdet, dict(lcache, iterations=len(steps), steps=steps)

    def backward(self, dz, dlogdet, cache):
        dx = self._logdet_backward(dz, dlogdet, cache)
        dx += dz
        self._after_backward()
        return dx

    def inverse_backward(self, dx, dlogdet, cache):
        a = dx + self._logdet_backward(None, -dlogdet, cache)   # the direct gradient at x
        dz = self._solve_adjoint(a, cache)
        self.g.jvp_backward(-dz, None, cache["gcache"])          # dtheta -= (dg/dtheta)^T dz
        self._after_backward()
        return dz

    def __repr__(self):
        return (f"ResidualBlock(dim={self.dim}, c={self.c}, logdet={self.logdet_mode!r}, "
                f"g={self.g!r})")


# ------------------------------------------------------------------ the gradcheck registry
def _randomize_lipschitz(sigma_over_c):
    r"""A ``randomize`` that perturbs the parameters, then rescales every weight to the given
    sigma / c (< 1: the spectral normalisation is inactive; > 1: its path is exercised) and
    sets the power iteration's u, v to the new weights' exact singular vectors."""
    def randomize(layer, rng, scale):
        randomize_parameters(layer, rng, scale)
        for mlp in _lipschitz_mlps(layer):
            for lin in mlp.linears:
                lin.params["W"] *= sigma_over_c * lin.c / np.linalg.norm(lin.params["W"], 2)
                lin.converge()
        return layer
    return randomize


def _lipschitz_mlps(layer):
    return [m for m in layer.modules() if isinstance(m, LipschitzMLP)]


register("ResidualBlock",
         lambda d, r: ResidualBlock(d, (8,), c=0.7, power_iterations=0, rng=r),
         randomize=_randomize_lipschitz(0.8))
# sine activation, Anderson solver, and weights with sigma = 1.5 c: W_hat = W / s, s > 1
# ... in evaluation mode, where sigma is the exact largest singular value (an SVD)
register("ResidualBlock(sigma>c)",
         lambda d, r: ResidualBlock(d, (8, 8), c=0.8, activation="sine", solver="anderson",
                                    power_iterations=0, rng=r).eval(),
         randomize=_randomize_lipschitz(1.5))
