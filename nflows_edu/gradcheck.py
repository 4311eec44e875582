r"""Finite differences as the oracle: the same checks the tests, the notebooks and
``nflows-edu check`` use.

For a bijector ``b`` and a batch ``x`` (float64), ``check_bijector`` measures

* round trip:  max |g(f(x)) - x|  and  max |f(g(z)) - z|;
* log-det:     max_n |logdet_n - log|det J_n||, with ``J_n`` the central-difference Jacobian
  of example ``n`` and ``log|det|`` from ``numpy.linalg.slogdet`` (both directions), and
  max_n |logdet_f(x)_n + logdet_g(z)_n| (the two directions must cancel);
* gradients:   for random upstream ``dz`` (N, D) and ``dlogdet`` (N,), the scalar
  L = sum(dz * f(x)) + sum(dlogdet * logdet_f(x)) has gradient ``backward(dz, dlogdet)`` with
  respect to ``x``, and ``grads`` with respect to each parameter; both are compared with
  central differences of L. The same for ``inverse`` / ``inverse_backward``.
"""
from dataclasses import dataclass, field

import numpy as np


def rel_error(a, b):
    r"""Normwise relative error  ||a - b|| / (||a|| + ||b||)  (0 when both are zero).

    Normwise rather than elementwise, so an entry that is 1e-12 in one and 2e-12 in the
    other (round-off around a true zero) does not count as a 33% error.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def numerical_jacobian(f, x, eps=1e-6):
    r"""Central-difference Jacobian of a row-wise map.

    Parameters
    ----------
    f : callable, (N, D) -> (N, M), each output row depending only on the same input row
    x : ndarray (N, D)

    Returns
    -------
    J : ndarray (N, M, D),   J[n, i, j] = (f(x + eps e_j) - f(x - eps e_j))[n, i] / (2 eps)
    """
    x = np.array(x, dtype=np.float64)
    columns = []
    for j in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, j] = eps
        columns.append((f(x + step) - f(x - step)) / (2 * eps))
    return np.stack(columns, axis=2)


def numerical_gradient(f, x, eps=1e-6):
    r"""Central-difference gradient of a scalar function with respect to the array ``x``.

    ``x`` is perturbed *in place*, one entry at a time, and restored, so ``f`` may take no
    argument and read ``x`` from a closure (that is how parameter gradients are checked).

    Returns an array with the shape of ``x``:  (f(x + eps e_i) - f(x - eps e_i)) / (2 eps).
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):
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
    """What ``check_bijector`` measured. ``grad_errors[direction][name]`` is a rel_error."""

    name: str
    roundtrip: float
    logdet: float
    logdet_cancel: float
    grad_errors: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    @property
    def max_grad_error(self):
        errs = [e for d in self.grad_errors.values() for e in d.values()]
        return max(errs) if errs else 0.0

    def passed(self, roundtrip=1e-10, logdet=1e-7, grad=1e-6):
        return (self.roundtrip <= roundtrip and self.logdet <= logdet
                and self.logdet_cancel <= logdet and self.max_grad_error <= grad)

    HEADER = f"{'layer':28s} {'round trip':>11s} {'logdet err':>11s} {'grad err':>10s}  VJPs"

    def row(self):
        vjps = ", ".join(f"{d}: {len(e)} array{'s' * (len(e) > 1)}" if d not in self.notes
                         else f"{d}: n/a"
                         for d, e in self.grad_errors.items())
        return (f"{self.name:28s} {self.roundtrip:11.1e} {max(self.logdet, self.logdet_cancel):11.1e}"
                f" {self.max_grad_error:10.1e}  {vjps}")

    def __str__(self):
        lines = [self.HEADER, self.row()]
        for direction, errs in self.grad_errors.items():
            for name, err in errs.items():
                lines.append(f"    {direction:8s} d{name:30s} {err:.2e}")
        lines += [f"    {d}: {msg}" for d, msg in self.notes.items()]
        return "\n".join(lines)


def _vjp_errors(apply, vjp, b, x, rng, eps):
    """rel_error of ``vjp`` against central differences, for the input and every parameter."""
    out, logdet, cache = apply(x)
    dout = rng.standard_normal(out.shape)
    dlogdet = rng.standard_normal(logdet.shape)

    def loss(v):
        o, ld, _ = apply(v)
        return np.sum(o * dout) + np.sum(ld * dlogdet)

    b.zero_grad()
    dx = vjp(dout, dlogdet, cache)
    x_work = x.copy()
    return _gradient_errors(b, lambda: loss(x_work), x_work, dx, eps)


def _gradient_errors(module, loss, x, dx, eps):
    """rel_error of ``dx`` and of ``module.grads`` (just filled by a backward pass) against
    central differences of ``loss()``, which reads ``x`` and the parameters in place."""
    analytic = {name: g.copy() for name, _, g in module.parameters()}
    errors = {"x": rel_error(dx, numerical_gradient(loss, x, eps))}
    for name, p, _ in module.parameters():
        errors[name] = rel_error(analytic[name], numerical_gradient(loss, p, eps))
    module.zero_grad()
    return errors


def check_bijector(b, x, rng=None, eps=1e-6, name=None):
    r"""Round trip, log-det against ``slogdet`` of the numerical Jacobian, and both VJPs.

    Parameters
    ----------
    b : Bijector (float64 parameters)
    x : ndarray (N, D), float64, a point in the domain of ``b.forward``
    rng : numpy.random.Generator for the random upstream gradients

    Returns
    -------
    CheckReport

    Examples
    --------
    >>> import numpy as np
    >>> from nflows_edu.bijectors import Scaling
    >>> rng = np.random.default_rng(0)
    >>> layer = Scaling(3); layer.params["s"][:] = [0.5, -1.0, 2.0]
    >>> report = check_bijector(layer, rng.standard_normal((4, 3)), rng)
    >>> report.passed()
    True
    """
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
    for direction, apply, vjp, point in (("forward", b.forward, b.backward, x),
                                         ("inverse", b.inverse, b.inverse_backward, z)):
        try:
            report.grad_errors[direction] = _vjp_errors(apply, vjp, b, point, rng, eps)
        except NotImplementedError as err:
            report.grad_errors[direction] = {}
            report.notes[direction] = str(err)
    return report


def check_module(m, x, rng=None, eps=1e-6):
    r"""rel_error of an ``nn`` module's backward for the input and every parameter.

    Loss L = sum(dy * m.forward(x)) with random ``dy``. Returns ``{name: rel_error}``.
    """
    rng = np.random.default_rng() if rng is None else rng
    x = np.array(x, dtype=np.float64)
    y, cache = m.forward(x)
    dy = rng.standard_normal(y.shape)
    m.zero_grad()
    dx = m.backward(dy, cache)
    return _gradient_errors(m, lambda: np.sum(m.forward(x)[0] * dy), x, dx, eps)


def randomize_parameters(module, rng, scale=0.5):
    """Move every parameter away from its initial value: p <- p + scale * N(0, 1)."""
    for _, p, _ in module.parameters():
        p += scale * rng.standard_normal(p.shape)
    return module


# ---------------------------------------------------------------------------------------------
# The registry: every bijector the library has, built at a random size with parameters moved
# away from their (often identity) initialisation. Tests and `nflows-edu check` loop over it,
# so a new layer gets every check by being added here.
# ---------------------------------------------------------------------------------------------

def _random_mask(dim, rng):
    mask = np.zeros(dim, dtype=np.int64)
    mask[rng.choice(dim, size=int(rng.integers(1, dim)), replace=False)] = 1
    return mask


def _registry():
    from .bijectors import (AdditiveCoupling, AffineCoupling, Permutation, Reverse, Scaling,
                            alternating_mask)
    from .core import Chain, Inverse

    def nice_chain(dim, rng):
        layers = [AdditiveCoupling(alternating_mask(dim, k % 2), (8,), "tanh", rng)
                  for k in range(3)]
        return Chain(layers + [Scaling(dim)])

    def realnvp_chain(dim, rng):
        return Chain([AffineCoupling(alternating_mask(dim, 0), (8,), "tanh", rng=rng),
                      Permutation(dim, rng=rng),
                      AffineCoupling(alternating_mask(dim, 1), (8,), "tanh", rng=rng)])

    return {
        "AdditiveCoupling": lambda d, r: AdditiveCoupling(_random_mask(d, r), (8, 8), "tanh", r),
        "AffineCoupling": lambda d, r: AffineCoupling(_random_mask(d, r), (8, 8), "tanh",
                                                      s_max=2.0, rng=r),
        "Scaling": lambda d, r: Scaling(d),
        "Permutation": lambda d, r: Permutation(d, rng=r),
        "Reverse": lambda d, r: Reverse(d),
        "Inverse(AffineCoupling)": lambda d, r: Inverse(AffineCoupling(_random_mask(d, r), (8,),
                                                                       "tanh", rng=r)),
        "Chain(NICE)": nice_chain,
        "Chain(RealNVP)": realnvp_chain,
    }


LAYER_NAMES = tuple(_registry())


def make_layer(name, rng, dim=None, scale=None):
    r"""Build registered layer ``name`` at a random size, with parameters moved off their
    initial values by ``scale * N(0, 1)``, and a batch ``x`` in its domain.

    Returns ``(bijector, x)`` with x of shape (N, D), 1 <= N <= 4, float64.
    """
    dim = int(rng.integers(2, 6)) if dim is None else dim
    scale = float(rng.uniform(0.1, 1.0)) if scale is None else scale
    layer = randomize_parameters(_registry()[name](dim, rng), rng, scale)
    x = rng.standard_normal((int(rng.integers(1, 5)), dim))
    return layer, x


def check_all(seed=0, draws=1):
    """``check_bijector`` on every registered layer; returns a list of CheckReports."""
    rng = np.random.default_rng(seed)
    reports = []
    for name in LAYER_NAMES:
        for _ in range(draws):
            layer, x = make_layer(name, rng)
            reports.append(check_bijector(layer, x, rng, name=name))
    return reports
