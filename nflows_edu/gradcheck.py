r"""Finite differences as the oracle: the same checks the tests, the notebooks and
``nflows-edu check`` use.

For a bijector ``b`` and a batch ``x`` (float64), ``check_bijector`` measures

* round trip:  max |g(f(x)) - x|  and  max |f(g(z)) - z|;
* log-det:     max_n |logdet_n - log|det J_n||, with ``J_n`` the central-difference Jacobian
  of example ``n`` and ``log|det|`` from ``numpy.linalg.slogdet`` (both directions), and
  max_n |logdet_f(x)_n + logdet_g(z)_n| (the two directions must cancel);
* gradients:   for random upstream ``dz`` and ``dlogdet`` (N,), the scalar
  L = sum(dz * f(x)) + sum(dlogdet * logdet_f(x)) has gradient ``backward(dz, dlogdet)`` with
  respect to ``x``, and ``grads`` with respect to each parameter; both are compared with
  central differences of L. The same for ``inverse`` / ``inverse_backward``, in every
  direction the layer declares in ``b.vjps``;
* bookkeeping: ``backward`` called twice on the same cache must double every gradient (it
  *adds* into ``grads``), keep the same ``grads`` arrays (an optimizer holds them), and return
  the same ``dx`` (it must not modify the cache).

The registry at the end of this file is how a layer gets all of that: ``register`` it (see
``register``'s docstring) and the tests and ``nflows-edu check`` loop over it.
"""
from dataclasses import dataclass, field

import numpy as np

DIRECTIONS = ("forward", "inverse")
# The bars a layer must pass in float64 (central differences with eps = 1e-6 are accurate
# to about eps^2 = 1e-12 in truncation and 1e-16 / eps = 1e-10 in round-off).
THRESHOLDS = dict(roundtrip=1e-10, logdet=1e-7, grad=1e-6)
GRADIENT_FLOOR = 1e-3  # see _gradient_errors
# The registry's sizes (see make_layer): batches of 1 to MAX_BATCH examples, log-uniform, and
# 2 to MAX_DIM features (or a registration's max_dim), so that a size hard-coded from a worked
# example (``[:4]``, ``range(5)``) is exceeded by most draws. The input gradient is compared on
# X_ENTRIES random entries (each one costs two evaluations of the whole batch).
MAX_BATCH = 64
MAX_DIM = 12
X_ENTRIES = 48
# The grader's hidden draws (``large=True``) start above a worked example's sizes: at least
# LARGE_DIM features (where the registration allows) and LARGE_BATCH examples.
LARGE_DIM = 6
LARGE_BATCH = 16


def rel_error(a, b):
    r"""Normwise relative error  ||a - b|| / (||a|| + ||b||)  (0 when both are zero).

    Normwise rather than elementwise, so an entry that is 1e-12 in one and 2e-12 in the
    other (round-off around a true zero) does not count as a 33% error.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def numerical_jacobian(f, x, eps=1e-6):
    r"""Central-difference Jacobian of an example-wise map.

    Parameters
    ----------
    f : callable, (N, ...) -> (N, ...), each output example depending only on the same input
        example (vectors (N, D) or images (N, C, H, W))
    x : ndarray (N, ...)

    Returns
    -------
    J : ndarray (N, M, D),  M and D the sizes of one output and one input example (flattened):
        J[n, i, j] = (f(x + eps e_j) - f(x - eps e_j))[n, i] / (2 eps)
    """
    x = np.array(x, dtype=np.float64)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    columns = []
    for j in range(flat.shape[1]):
        step = np.zeros_like(flat)
        step[:, j] = eps
        plus = f((flat + step).reshape(x.shape))
        minus = f((flat - step).reshape(x.shape))
        columns.append((plus - minus).reshape(n, -1) / (2 * eps))
    return np.stack(columns, axis=2)


def numerical_gradient(f, x, eps=1e-6, at=None):
    r"""Central-difference gradient of a scalar function with respect to the array ``x``.

    ``x`` is perturbed *in place*, one entry at a time, and restored, so ``f`` may take no
    argument and read ``x`` from a closure (that is how parameter gradients are checked).

    Returns an array with the shape of ``x``:  (f(x + eps e_i) - f(x - eps e_i)) / (2 eps),
    for every entry i, or only for the indices listed in ``at`` (the others left 0).
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape) if at is None else at:
        old = x[i]
        x[i] = old + eps
        f_plus = f()
        x[i] = old - eps
        f_minus = f()
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


@dataclass
class CheckReport:
    r"""What ``check_bijector`` measured.

    ``grad_errors[direction][name]`` is a rel_error; ``status[direction]`` is ``"checked"``,
    ``"not implemented"`` (declared in ``vjps`` but raised ``NotImplementedError``: fails) or
    ``"not provided"`` (not declared: a sequential direction, skipped); ``problems`` lists
    bookkeeping faults (a rebound or overwritten gradient, a modified cache): each one fails.
    ``thresholds`` are the bars ``passed`` applies: ``THRESHOLDS``, or a registration's own
    looser round-trip and log-det bars (see ``register``'s ``tolerances``).
    """

    name: str
    roundtrip: float
    logdet: float
    logdet_cancel: float
    grad_errors: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    thresholds: dict = field(default_factory=lambda: dict(THRESHOLDS))

    @property
    def max_grad_error(self):
        errs = [e for d in self.grad_errors.values() for e in d.values()]
        return max(errs) if errs else 0.0

    def passed(self, roundtrip=None, logdet=None, grad=None):
        """Every check within its bar (``self.thresholds`` unless given)."""
        roundtrip = self.thresholds["roundtrip"] if roundtrip is None else roundtrip
        logdet = self.thresholds["logdet"] if logdet is None else logdet
        grad = self.thresholds["grad"] if grad is None else grad
        return (self.roundtrip <= roundtrip and self.logdet <= logdet
                and self.logdet_cancel <= logdet and self.max_grad_error <= grad
                and "not implemented" not in self.status.values() and not self.problems)

    HEADER = (f"{'layer':28s} {'round trip':>11s} {'logdet err':>11s} {'grad err':>10s}  "
              f"{'result':6s}  VJPs")
    THRESHOLD_LINE = (f"{'(pass if at most)':28s} {THRESHOLDS['roundtrip']:11.0e} "
                      f"{THRESHOLDS['logdet']:11.0e} {THRESHOLDS['grad']:10.0e}")

    def row(self):
        vjps = ", ".join(f"{d}: {self.status[d]}" for d in DIRECTIONS if d in self.status)
        result = "pass" if self.passed() else "FAIL"
        line = (f"{self.name:28s} {self.roundtrip:11.1e} "
                f"{max(self.logdet, self.logdet_cancel):11.1e} {self.max_grad_error:10.1e}  "
                f"{result:6s}  {vjps}")
        own = {k: v for k, v in self.thresholds.items() if v != THRESHOLDS[k]}
        if own:
            line += "  (own bars: " + ", ".join(f"{k} {v:.0e}" for k, v in own.items()) + ")"
        return line + "".join(f"\n    problem: {p}" for p in self.problems)

    def __str__(self):
        lines = [self.HEADER, self.THRESHOLD_LINE, self.row()]
        for direction, errs in self.grad_errors.items():
            for name, err in errs.items():
                lines.append(f"    {direction:8s} d{name:30s} {err:.2e}")
        lines += [f"    {d}: {msg}" for d, msg in self.notes.items()]
        return "\n".join(lines)


def _bookkeeping(module, call, result, where):
    r"""Call a backward pass a second time on the same cache and list what it did wrong.

    ``call()`` runs the backward pass; ``result`` is what its first run returned, right after
    ``zero_grad``. A correct pass *adds* into the very arrays in ``grads`` (an optimizer holds
    them), so a second run doubles every gradient, and it leaves the cache as it found it,
    so it returns the same ``dx``.
    """
    once = {name: g.copy() for name, _, g in module.parameters()}
    arrays = {name: g for name, _, g in module.parameters()}
    again = call()
    problems = []
    for name, _, g in module.parameters():
        if g is not arrays[name]:
            problems.append(f"{where} rebinds grads[{name!r}] (use += on the array: an "
                            "optimizer holds the old one and never sees the gradient)")
        elif rel_error(g, 2 * once[name]) > 1e-12:
            problems.append(f"{where} overwrites grads[{name!r}] instead of adding into it "
                            "(two calls should double it)")
    if rel_error(again, result) > 1e-12:
        problems.append(f"{where} returns a different result when called again on the same "
                        "cache (does it modify the cache?)")
    return problems


def _compare(loss, p, analytic, eps, entries, rng, floor=0.0):
    r"""Normwise error of the gradient ``analytic`` of ``loss()`` with respect to the array
    ``p`` (perturbed in place), against central differences.

    Every entry when ``entries`` is None or ``p`` has at most that many: then
    ||a - n|| / (||a|| + ||n|| + floor). Otherwise ``entries`` entries S drawn at random
    without replacement, and the whole array's norms are estimated from them:
    c ||a_S - n_S|| / (||a|| + c ||n_S|| + floor), c = sqrt(size / entries).
    ``floor`` (see ``_gradient_errors``) is 0 for the input.
    """
    if entries is None or p.size <= entries:
        numeric, sampled, scale = numerical_gradient(loss, p, eps), analytic, 1.0
    else:
        picked = [np.unravel_index(i, p.shape) for i in rng.choice(p.size, entries, False)]
        idx = tuple(np.array(picked).T)
        numeric = numerical_gradient(loss, p, eps, at=picked)[idx]
        sampled, scale = analytic[idx], np.sqrt(p.size / entries)
    diff = scale * np.linalg.norm(sampled - numeric)
    denom = np.linalg.norm(analytic) + scale * np.linalg.norm(numeric) + floor
    return 0.0 if denom == 0 else float(diff / denom)


def _gradient_errors(module, loss, x, dx, eps, entries=None, rng=None, x_entries=None):
    """rel_error of ``dx`` and of ``module.grads`` (just filled by a backward pass) against
    central differences of ``loss()``, which reads ``x`` and the parameters in place.

    With ``entries``, a parameter array larger than that is compared on ``entries`` of its
    entries drawn at random (a spot check that keeps a whole model's check affordable); with
    ``x_entries``, the same for the input ``x`` (a batch of 64 examples of 12 features has
    768 entries, each two evaluations of the whole batch). The error reported estimates the
    whole array's: the sampled difference scaled by sqrt(size / entries), over the norm of
    the whole analytic gradient (a few tiny entries alone would make round-off look like a
    large relative error). Without sampling it is ``rel_error``."""
    analytic = {name: g.copy() for name, _, g in module.parameters()}
    rng = np.random.default_rng() if rng is None else rng
    errors = {"x": _compare(loss, x, np.asarray(dx, dtype=np.float64), eps, x_entries, rng)}
    # A parameter whose gradient is a tiny part of the whole (a scalar whose terms cancel:
    # 5e-6 beside arrays of norm 1-4) is compared on the scale of the whole gradient: its
    # central difference is only accurate to round-off, about 1e-10 in absolute terms.
    whole = np.sqrt(np.sum(np.square(dx)) + sum(np.sum(np.square(g)) for g in analytic.values()))
    for name, p, _ in module.parameters():
        errors[name] = _compare(loss, p, analytic[name], eps, entries, rng,
                                GRADIENT_FLOOR * whole)
    module.zero_grad()
    return errors


def _check_vjp(b, direction, x, rng, eps, entries=None, x_entries=None):
    """(errors, problems) of ``backward`` (direction "forward") or ``inverse_backward``
    (direction "inverse") of a bijector, or of an ``nn`` module's ``backward`` (direction
    None: ``forward(x) -> (y, cache)``, ``backward(dy, cache)``, no log-det)."""
    if direction is None:
        def apply(v):
            y, cache = b.forward(v)
            return y, None, cache

        def vjp(dy, dlogdet, cache):
            return b.backward(dy, cache)
        name = f"{type(b).__name__}.backward"
    else:
        apply = b.forward if direction == "forward" else b.inverse
        vjp = b.backward if direction == "forward" else b.inverse_backward
        name = "backward" if direction == "forward" else "inverse_backward"
    out, logdet, cache = apply(x)
    dout = rng.standard_normal(out.shape)
    dlogdet = None if logdet is None else rng.standard_normal(logdet.shape)

    def loss(v):
        o, ld, _ = apply(v)
        return np.sum(o * dout) + (0.0 if ld is None else np.sum(ld * dlogdet))

    b.zero_grad()
    dx = vjp(dout, dlogdet, cache)
    problems = _bookkeeping(b, lambda: vjp(dout, dlogdet, cache), dx, name)
    b.zero_grad()
    dx = vjp(dout, dlogdet, cache)
    x_work = x.copy()
    return (_gradient_errors(b, lambda: loss(x_work), x_work, dx, eps, entries, rng, x_entries),
            problems)


def vjp_errors(b, x, rng=None, direction="forward", eps=1e-6):
    r"""rel_error of one VJP of ``b`` for the input and every parameter, on the whole-batch
    loss L = sum(dout * out) + sum(dlogdet * logdet) with random ``dout`` and ``dlogdet``.

    The same check ``check_bijector`` runs, usable on its own for a layer whose outputs depend
    on the whole batch (``BatchNorm`` in training mode), where the per-example Jacobian does
    not apply. Returns ``(errors, problems)``: ``{name: rel_error}`` and the bookkeeping
    faults (see ``_bookkeeping``).
    """
    rng = np.random.default_rng() if rng is None else rng
    return _check_vjp(b, direction, np.asarray(x, dtype=np.float64), rng, eps)


def check_bijector(b, x, rng=None, eps=1e-6, name=None, entries=None, x_entries=None):
    r"""Round trip, log-det against ``slogdet`` of the numerical Jacobian, and both VJPs.

    Parameters
    ----------
    b : Bijector (float64 parameters)
    x : ndarray (N, ...), float64, a point in the domain of ``b.forward``
    rng : numpy.random.Generator for the random upstream gradients
    entries : int, optional
        Compare at most this many randomly chosen entries of each parameter array with
        central differences (default: every entry). For whole models, whose layers are each
        checked entry by entry on their own.
    x_entries : int, optional
        Compare at most this many randomly chosen entries of the input gradient (default:
        every entry). The log-det check always uses the whole batch.

    Returns
    -------
    CheckReport

    The VJPs checked are those ``b.vjps`` declares. A declared one that raises
    ``NotImplementedError`` (an unfinished TODO) fails the check.

    Examples
    --------
    >>> import numpy as np
    >>> from nflows_edu.bijectors import Scaling
    >>> rng = np.random.default_rng(0)
    >>> layer = Scaling(3); layer.params["log_s"][:] = [0.5, -1.0, 2.0]
    >>> report = check_bijector(layer, rng.standard_normal((4, 3)), rng)
    >>> report.passed(), report.status
    (True, {'forward': 'checked', 'inverse': 'checked'})
    """
    from .threads import blas_threads
    # One BLAS thread: the checks evaluate the layer many times on small arrays and take the
    # slogdet of a stack of small Jacobians, where threads only wait for each other (on a
    # loaded 2-core machine a (42, 192, 192) slogdet took 5.9 s with two threads, 0.016 s
    # with one).
    with blas_threads(1):
        return _check_bijector(b, x, rng, eps, name, entries, x_entries)


def _check_bijector(b, x, rng, eps, name, entries, x_entries):
    """``check_bijector``'s work, in the caller's thread setting."""
    rng = np.random.default_rng() if rng is None else rng
    x = np.asarray(x, dtype=np.float64)
    z, ld_f, _ = b.forward(x)
    x_back, ld_g, _ = b.inverse(z)
    z_again, _, _ = b.forward(x_back)
    roundtrip = max(np.abs(x_back - x).max(), np.abs(z_again - z).max())

    logabs_f = np.linalg.slogdet(numerical_jacobian(lambda v: b.forward(v)[0], x, eps))[1]
    logabs_g = np.linalg.slogdet(numerical_jacobian(lambda v: b.inverse(v)[0], z, eps))[1]
    logdet = max(np.abs(ld_f - logabs_f).max(), np.abs(ld_g - logabs_g).max())

    report = CheckReport(name or type(b).__name__, float(roundtrip), float(logdet),
                         float(np.abs(ld_f + ld_g).max()))
    for direction, point in zip(DIRECTIONS, (x, z)):
        if direction not in b.vjps:
            report.status[direction] = "not provided"
            continue
        try:
            errors, problems = _check_vjp(b, direction, point, rng, eps, entries, x_entries)
        except NotImplementedError as err:
            report.status[direction] = "not implemented"
            report.notes[direction] = f"declared in vjps but raised NotImplementedError: {err}"
            continue
        report.status[direction] = "checked"
        report.grad_errors[direction] = errors
        report.problems += problems
    return report


def check_module(m, x, rng=None, eps=1e-6):
    r"""rel_error of an ``nn`` module's backward for the input and every parameter.

    Loss L = sum(dy * m.forward(x)) with random ``dy``. Returns ``{name: rel_error}``; a
    bookkeeping fault (see ``_bookkeeping``) raises ``AssertionError`` naming it.
    """
    rng = np.random.default_rng() if rng is None else rng
    errors, problems = _check_vjp(m, None, np.array(x, dtype=np.float64), rng, eps)
    if problems:
        raise AssertionError("; ".join(problems))
    return errors


def randomize_parameters(module, rng, scale=0.5):
    """Move every parameter away from its initial value: p <- p + scale * N(0, 1)."""
    for _, p, _ in module.parameters():
        p += scale * rng.standard_normal(p.shape)
    return module


# ---------------------------------------------------------------------------------------------
# The registry: every bijector the library has, built at a random size with parameters moved
# away from their (often identity) initialisation. Tests and `nflows-edu check` loop over it,
# so a new layer gets every check by being registered, next to its class.
# ---------------------------------------------------------------------------------------------

@dataclass
class _Registration:
    """How to build one registered layer for the checks (see ``register``)."""

    name: str
    build: object
    inputs: object = None
    randomize: object = None
    entries: object = None
    eps: float = 1e-6
    max_dim: int = MAX_DIM
    max_n: int = MAX_BATCH
    tolerances: dict = None
    reason: str = None


_REGISTRY = {}
# The bars a registration may loosen (see ``register``): the values of a map computed with a
# discretisation error. The gradients never: a VJP is exact for the map the layer computes.
LOOSENABLE = ("roundtrip", "logdet")


def register(name, build, inputs=None, randomize=None, entries=None, eps=1e-6,
             max_dim=MAX_DIM, max_n=MAX_BATCH, tolerances=None, reason=None):
    r"""Put a layer through every generic check: the tests and ``nflows-edu check`` loop over
    the registry.

    Parameters
    ----------
    name : str
        Shown in reports and test ids; usually the class name.
    build : callable ``(dim, rng) -> Bijector``
        A float64 layer for inputs of ``dim`` features (2 <= dim <= ``max_dim``), built from
        ``rng``.
    inputs : callable ``(layer, n, rng) -> x``, optional
        ``n`` points in the domain of ``layer.forward``; default ``rng.standard_normal((n,
        layer.dim))``. Give it for layers with a restricted domain (a logit wants (0, 1)) or
        other shapes (images).
    randomize : callable ``(layer, rng, scale) -> layer``, optional
        Moves the parameters off their initial values; default ``randomize_parameters``
        (adds ``scale * N(0, 1)``). Give it for parameters with constraints.
    entries : int, optional
        Check at most this many random entries of each parameter array (``check_bijector``'s
        ``entries``): for whole models made of layers that are registered on their own.
    eps : float
        The central differences' step. A layer computed by an iterative solver to a
        tolerance (``ImplicitBlock``) carries that error into every evaluation, and the
        differences divide it by 2 eps: such a layer needs a larger step.
    max_dim : int
        The largest ``dim`` drawn (default ``MAX_DIM`` = 12). Give a smaller one where ``dim``
        is not a number of features (the channels of an image layer, whose examples have
        ``dim * H * W`` entries) or where the exact log-det check, 2 ``D`` evaluations of the
        batch and a ``D x D`` slogdet per example, gets expensive.
    max_n : int
        The largest batch drawn (default ``MAX_BATCH`` = 64).
    tolerances : dict, optional
        Looser bars for ``"roundtrip"`` and/or ``"logdet"`` than ``THRESHOLDS``, with the
        ``reason`` (a sentence, printed by ``nflows-edu check``) required beside them: for a
        layer whose inverse or log-det carries a known discretisation error (``CNF``: a
        fixed-step ODE solver, O(h^4)), which its own tests must then show is that error and
        no bug (its order). The gradient bar cannot be loosened: the VJPs are exact for the
        map the layer computes.
    reason : str, why ``tolerances`` are needed

    Examples
    --------
    A student's layer goes through the same loop as the library's:

    >>> from nflows_edu.bijectors import Scaling
    >>> class MyScaling(Scaling):
    ...     pass
    >>> register("MyScaling", lambda dim, rng: MyScaling(dim))
    >>> [r.passed() for r in check_all(layers=["MyScaling"])]
    [True]
    >>> unregister("MyScaling")
    """
    if name in _REGISTRY:
        raise ValueError(f"register: a layer called {name!r} is registered already")
    if not 2 <= max_dim or not 1 <= max_n:
        raise ValueError(f"register {name!r}: expected max_dim >= 2 and max_n >= 1, got "
                         f"{max_dim} and {max_n}")
    if tolerances is not None:
        bad = sorted(set(tolerances) - set(LOOSENABLE))
        if bad or not reason:
            raise ValueError(f"register {name!r}: tolerances may loosen only {LOOSENABLE}, with "
                             f"a reason; got keys {sorted(tolerances)} and reason {reason!r}")
        tolerances = {k: max(float(v), THRESHOLDS[k]) for k, v in tolerances.items()}
    _REGISTRY[name] = _Registration(name, build, inputs, randomize, entries, eps, int(max_dim),
                                    int(max_n), tolerances, reason)


def unregister(name):
    """Remove ``name`` from the registry (a student's layer after its checks ran)."""
    _REGISTRY.pop(name)


def layer_names():
    """The names of every registered layer, in registration order."""
    from . import bijectors  # noqa: F401  (registers the library's own layers)
    return tuple(_REGISTRY)


def log_uniform_int(rng, low, high):
    r"""An integer in [low, high] with log-uniform probability: as many draws in 1..8 as in
    8..64, so both small batches (an edge case at N = 1) and large ones occur."""
    value = int(np.exp(rng.uniform(np.log(low), np.log(high + 1))))
    return min(max(value, low), high)


def draw_sizes(name, rng, large=False):
    r"""``(dim, n)`` for registered layer ``name``.

    ``dim`` is uniform over 2..max_dim and ``n`` log-uniform over 1..max_n (the
    registration's, 12 and 64 by default). With ``large``, from the upper part of those
    ranges: ``dim`` over LARGE_DIM..max_dim (6..12) and ``n`` log-uniform over
    LARGE_BATCH..max_n (16..64), each capped by the registration's maximum. These are the
    grader's hidden draws, every one of which must exceed a size hard-coded from a worked
    example (a batch of 4, 5 features).
    """
    entry = _REGISTRY[name]
    low_dim = min(LARGE_DIM, entry.max_dim) if large else 2
    low_n = min(LARGE_BATCH, entry.max_n) if large else 1
    return int(rng.integers(low_dim, entry.max_dim + 1)), log_uniform_int(rng, low_n, entry.max_n)


def make_layer(name, rng, dim=None, scale=None, n=None, large=False):
    r"""Build registered layer ``name`` at a random size, with parameters moved off their
    initial values by ``scale * N(0, 1)``, and a batch ``x`` in its domain.

    Returns ``(bijector, x)`` with x of shape (N, ...), float64. ``dim`` and ``N`` are drawn
    by ``draw_sizes`` (2 <= dim <= 12 and 1 <= N <= 64 unless the registration says
    otherwise; the upper part of those ranges with ``large``) unless given.
    """
    if name not in layer_names():
        raise ValueError(f"make_layer: no registered layer {name!r}; registered: "
                         f"{', '.join(layer_names())}")
    entry = _REGISTRY[name]
    drawn_dim, drawn_n = draw_sizes(name, rng, large)
    dim = drawn_dim if dim is None else dim
    scale = float(rng.uniform(0.1, 1.0)) if scale is None else scale
    layer = entry.build(dim, rng)
    (entry.randomize or randomize_parameters)(layer, rng, scale)
    n = drawn_n if n is None else n
    if entry.inputs is None:
        x = rng.standard_normal((n, layer.dim))
    else:
        x = np.asarray(entry.inputs(layer, n, rng), dtype=np.float64)
    return layer, x


def check_options(name):
    """The options registered layer ``name`` is checked with: ``{"eps": ..., "entries": ...,
    "x_entries": X_ENTRIES}`` (keyword arguments of ``check_bijector``)."""
    entry = _REGISTRY[name]
    return dict(eps=entry.eps, entries=entry.entries, x_entries=X_ENTRIES)


def thresholds(name):
    """The bars registered layer ``name`` is held to: ``THRESHOLDS`` with the registration's
    own ``tolerances``, and the reason for them (None if it has none)."""
    entry = _REGISTRY[name]
    return {**THRESHOLDS, **(entry.tolerances or {})}, entry.reason


def check_layer(name, rng):
    """``make_layer(name, rng)`` then ``check_bijector`` with the registration's options,
    judged by its bars (``thresholds(name)``)."""
    layer, x = make_layer(name, rng)
    report = check_bijector(layer, x, rng, name=name, **check_options(name))
    report.thresholds, reason = thresholds(name)
    if reason:
        report.notes["bars"] = reason
    return report


def check_all(seed=0, draws=1, layers=None):
    """``check_bijector`` on every registered layer (or those named in ``layers``), ``draws``
    random sizes and parameters each; returns a list of CheckReports.

    A layer that raises (a student's layer with a bug) gets a failing report that says what
    it raised, and the other layers are still checked.
    """
    rng = np.random.default_rng(seed)
    reports = []
    for name in layer_names() if layers is None else layers:
        for _ in range(draws):
            try:
                reports.append(check_layer(name, rng))
            except Exception as err:  # noqa: BLE001  (reported, not hidden)
                report = CheckReport(name, np.inf, np.inf, np.inf)
                report.problems.append(f"raised {type(err).__name__}: {err}")
                reports.append(report)
    return reports
