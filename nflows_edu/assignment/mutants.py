r"""The mutation catalogue: the bugs students really make, each a small edit of one library
method, and whether the checker catches it.

A ``Mutant`` names a method (``Class.method``, usually an exercise of the catalogue), the
layer it breaks, the bug in one line, and the edit: ``(old, new)`` string replacements applied
to the library method's source (``inspect.getsource``). So

* ``mutant.source`` is the mutated method, ready to paste into a student's module (the
  autograder tests do exactly that) or to show in a lab (notebook 09);
* ``mutant_class(mutant)`` returns a subclass of the library class with the mutated method,
  compiled in the library module's namespace (its helpers are in scope);
* ``check_mutant(mutant)`` builds the registry layers of the method's exercise with the mutated
  class swapped in (``checks.swap_classes``: a mutated ``Linear`` is checked inside a coupling
  layer's network) and runs ``gradcheck.check_bijector`` on a few draws, plus the exercise's
  extra checks (``BatchNorm``'s training-mode batch gradient). The mutant is *caught* when a
  draw fails, and ``MutationResult.failures`` says which check failed and by how much.

Example
-------
>>> from nflows_edu.assignment.mutants import MUTANTS, check_mutant
>>> m = next(m for m in MUTANTS if m.name == "AffineCoupling.backward: dlogdet sign flipped")
>>> print(next(line.strip() for line in m.source.splitlines() if "dlogdet[:, None]" in line))
dx_b, ds, dt = affine_backward(dz_b, x_b, s, -dlogdet[:, None])
>>> check_mutant(m).caught
True

Every mutant in ``MUTANTS`` is caught (tests/test_assignment.py requires it). Bugs that the
checker cannot see by design are listed in ``SURVIVORS`` with the reason, and are not counted:
there the checker is right and the edit is not a bug of the map it checks.
"""
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Mutant:
    r"""One bug.

    Attributes
    ----------
    name : str, ``"Class.method: the bug"``
    target : str, ``"Class.method"``, the method edited (an exercise of the catalogue)
    layer : str, the class whose behaviour breaks
    description : str, what the student wrote and what it does
    edits : tuple of (old, new), replacements in the method's source; each ``old`` must
        occur exactly once
    expected : str, the check expected to catch it ("round trip", "log-det", "gradient",
        "bookkeeping", "training-mode gradient", "raised", or an extra check's name)
    helpers : tuple of str, module-level functions of the method's module that the method
        calls (directly or through each other) and that the edits change: a student who
        writes ``RQSpline.forward`` writes the spline's knots, bin search and formula too.
        ``original`` then holds copies of them as nested functions at the top of the method
        body, which shadow the library's, so the mutated method is still one pasteable
        function.
    """

    name: str
    target: str
    description: str
    edits: tuple
    expected: str
    helpers: tuple = ()

    @property
    def layer(self):
        return self.target.split(".")[0]

    @property
    def exercise(self):
        from .catalogue import get_exercise
        return get_exercise(self.target)

    @property
    def original(self):
        """The library method's source, dedented (with its ``helpers`` nested in it)."""
        from .make import library_source
        text = library_source(self.exercise)
        return with_nested_helpers(text, self.exercise, self.helpers) if self.helpers else text

    @property
    def source(self):
        """The mutated method's source, dedented (``def method(self, ...):`` first)."""
        text = self.original
        for old, new in self.edits:
            if text.count(old) != 1:
                raise ValueError(f"mutant {self.name!r}: expected {old!r} exactly once in "
                                 f"{self.target}'s source, found it {text.count(old)} times "
                                 "(has the library method changed?)")
            text = text.replace(old, new)
        hide = self.exercise.hide
        if hide and not any(text.count(name) > 1 for name in hide):
            # the edit removed the only use of a helper ``library_source`` imported
            text = "\n".join(line for line in text.splitlines()
                              if not (line.strip().startswith("from ")
                                      and line.strip().endswith(f"import {', '.join(hide)}")))
            text += "\n"
        return text


def with_nested_helpers(text, ex, helpers):
    r"""``text``, the source of exercise ``ex``'s method, with the module-level functions
    ``helpers`` copied in as nested functions (after an import of the other module-level
    names they use), in place of the import of the exercise's hidden helpers.

    A helper is looked up in the method's module (a function it imports by name counts:
    ``cnf.py``'s ``rk4``, defined in ``ode.py``), or else in the module of a helper named
    before it (``rk4_step``, which ``rk4`` calls, from ``ode.py``); the other names a helper
    uses are imported from the module that defines it."""
    from .make import insert_at_top_of_body
    module = inspect.getmodule(getattr(ex.cls, ex.method))
    homes, functions = [module], []
    for h in helpers:
        home = next((m for m in homes if callable(vars(m).get(h))), None)
        if home is None:
            raise ValueError(f"helper {h!r} is neither in {module.__name__} nor in the module "
                             "of a helper named before it")
        functions.append(vars(home)[h])
        homes.append(inspect.getmodule(functions[-1]))
    sources = [textwrap.dedent(inspect.getsource(f)) for f in functions]
    imports = {}   # module name -> names the helpers (and the hidden import) need from it
    for f, source in zip(functions, sources):
        names = set(re.findall(r"\b[A-Za-z_]\w*\b", source))  # defaults' names too
        imports.setdefault(inspect.getmodule(f).__name__, set()).update(names)
    imports.setdefault(module.__name__, set()).update(ex.hide)
    hidden_import = f"from {module.__name__} import {', '.join(ex.hide)}"
    text = "\n".join(line for line in text.splitlines() if line.strip() != hidden_import) + "\n"
    block = ["# the library's helpers, copied in as nested functions (a mutant edits them)"]
    for name, names in imports.items():
        own = vars(sys.modules[name])
        used = sorted(n for n in names if n in own and n not in helpers
                      and not inspect.ismodule(own[n]) and not n.startswith("__"))
        block += [f"from {name} import {', '.join(used)}"] if used else []
    for source in sources:
        block += source.rstrip("\n").splitlines()
    return insert_at_top_of_body(text, block)


def mutant_class(mutant):
    r"""A subclass of the library class whose ``mutant.target`` method is the mutated source,
    compiled in the namespace of the library class's module."""
    ex = mutant.exercise
    method = getattr(ex.cls, ex.method)
    module = inspect.getmodule(method)
    namespace = dict(vars(module))
    exec(compile(mutant.source, f"<mutant {mutant.name}>", "exec"), namespace)
    return type(ex.cls.__name__, (ex.cls,), {ex.method: namespace[ex.method],
                                              "__module__": __name__})


@dataclass
class MutationResult:
    """``caught`` if any draw of any check failed; ``failures`` lists them."""

    mutant: Mutant
    caught: bool
    failures: list = field(default_factory=list)


def check_mutant(mutant, draws=2, seed=0):
    r"""The registry checks (and the extra checks) of the mutant's exercise on the mutated
    class, ``draws`` draws each; see the module docstring."""
    from .checks import registry_checks
    rng = np.random.default_rng(seed)
    # a mutant may compute 0/0 (the textbook root at a linear bin): its NaN fails the checks,
    # and NumPy's warning about it is noise
    with np.errstate(divide="ignore", invalid="ignore"):
        results = registry_checks(mutant.exercise, mutant_class(mutant), rng, draws)
    failures = [f"{label}: {'; '.join(bad)}" for label, bad in results if bad]
    return MutationResult(mutant, bool(failures), failures)


def mutation_score(mutants=None, draws=2, seed=0):
    """``(caught, total, results)`` over ``mutants`` (default all of ``MUTANTS``)."""
    results = [check_mutant(m, draws, seed) for m in (MUTANTS if mutants is None else mutants)]
    return sum(r.caught for r in results), len(results), results


def _m(target, bug, description, edits, expected, helpers=()):
    return Mutant(f"{target}: {bug}", target, description, tuple(edits), expected,
                  tuple(helpers))


MUTANTS = (
    # ---------------------------------------------------------------- nn.Linear
    _m("Linear.backward", "transposed weight gradient",
       "dW = dy^T x instead of x^T dy: (O, I) instead of (I, O); raises for a non-square W, "
       "wrong values for a square one",
       [('self.grads["W"] += x.T @ dy', 'self.grads["W"] += dy.T @ x')],
       "gradient"),
    _m("Linear.backward", "grads overwritten",
       "self.grads['W'] = ... rebinds the array: the optimizer holds the old one",
       [('self.grads["W"] += x.T @ dy', 'self.grads["W"] = x.T @ dy')], "bookkeeping"),
    _m("Linear.backward", "grads assigned in place",
       "grads['W'][...] = ... keeps the array but drops what an earlier backward added",
       [('self.grads["W"] += x.T @ dy', 'self.grads["W"][...] = x.T @ dy')], "bookkeeping"),
    _m("Linear.backward", "bias gradient averaged",
       "db = mean_n dy instead of sum_n dy: the batch size divides the bias gradient",
       [('self.grads["b"] += dy.sum(axis=0)', 'self.grads["b"] += dy.mean(axis=0)')],
       "gradient"),
    _m("Linear.backward", "first 4 examples only",
       "dW = x[:4]^T dy[:4]: the weight gradient of the worked example's batch of 4",
       [('self.grads["W"] += x.T @ dy', 'self.grads["W"] += x[:4].T @ dy[:4]')], "gradient"),
    # ---------------------------------------------------------------- nn.MLP (Sequential)
    _m("MLP.backward", "caches in the wrong order",
       "zip(reversed(layers), caches): each layer gets another layer's cache",
       [("zip(reversed(self.layers), reversed(caches))", "zip(reversed(self.layers), caches)")],
       "gradient"),
    _m("MLP.backward", "layers in forward order",
       "backpropagation from the first layer to the last",
       [("zip(reversed(self.layers), reversed(caches))", "zip(self.layers, caches)")],
       "gradient"),
    # ---------------------------------------------------------------- nn.MaskedLinear, MADE
    _m("MaskedLinear.backward", "gradient not masked",
       "dW without * M: masked-out weights get a gradient and drift (the loss ignores them)",
       [("dW *= self.mask", "pass")], "gradient"),
    _m("MaskedLinear.backward", "bias gradient of the first 4 examples",
       "db = sum over the first 4 examples of dy: a batch size hard-coded",
       [('self.grads["b"] += dy.sum(axis=0)', 'self.grads["b"] += dy[:4].sum(axis=0)')],
       "gradient"),
    _m("MaskedLinear.backward", "dx through the unmasked weight",
       "dx = dy @ W^T instead of dy @ (W * M)^T",
       [("return dy @ WM.T", 'return dy @ self.params["W"].T')], "gradient"),
    _m("MADE.masks", "mask leak into the outputs",
       ">= instead of > into the outputs: mu_i and alpha_i see x_i itself; not triangular",
       [("d_out[None, :] > d_in[:, None] if last", "d_out[None, :] >= d_in[:, None] if last")],
       "log-det"),
    _m("MADE.masks", "no masks",
       "all-ones masks: a plain MLP, every output sees every input",
       [("d_out[None, :] > d_in[:, None] if last",
         "(d_out[None, :] > -1) | (d_in[:, None] > -1) if last"),
        ("else d_out[None, :] >= d_in[:, None]",
         "else (d_out[None, :] > -1) | (d_in[:, None] > -1)")], "log-det"),
    # ---------------------------------------------------------------- nn.SpectralLinear
    _m("SpectralLinear.weight_backward", "normalisation treated as a constant",
       "dW = dW_hat / s: no gradient through sigma = u^T W v (stop-gradient on the norm)",
       [("(dW_hat - np.sum(dW_hat * W_hat) / self.c * np.outer(u, v)) / s", "dW_hat / s")],
       "gradient"),
    _m("SpectralLinear.weight_backward", "divisor forgotten",
       "dW = dW_hat: as if W_hat were W",
       [("(dW_hat - np.sum(dW_hat * W_hat) / self.c * np.outer(u, v)) / s", "dW_hat")],
       "gradient"),
    # ---------------------------------------------------------------- AdditiveCoupling
    _m("AdditiveCoupling.forward", "shift subtracted",
       "z_b = x_b - t in forward, while inverse also subtracts",
       [("x_b + t", "x_b - t")], "round trip"),
    _m("AdditiveCoupling.inverse", "shift added",
       "x_b = z_b + t: not the inverse",
       [("z_b - t", "z_b + t")], "round trip"),
    _m("AdditiveCoupling.backward", "network path dropped",
       "dx_a = dz_a: forgets that t depends on x_a (and never trains the network)",
       [("dx_a = dz_a + self.net.backward(dt, cache)", "dx_a = dz_a")], "gradient"),
    # ---------------------------------------------------------------- AffineCoupling
    _m("AffineCoupling.forward", "log-det of the wrong direction",
       "forward returns -sum s, the inverse's log-det",
       [("s.sum(axis=1), (x_b", "-s.sum(axis=1), (x_b")], "log-det"),
    _m("AffineCoupling.inverse", "log-det of the wrong direction",
       "inverse returns +sum s, the forward's log-det",
       [("-s.sum(axis=1)", "s.sum(axis=1)")], "log-det"),
    _m("AffineCoupling.inverse", "wrong cache",
       "caches the input z_b instead of the output x_b that inverse_backward needs",
       [("(x_b, s, net_cache)", "(z_b, s, net_cache)")], "gradient"),
    _m("AffineCoupling.backward", "dlogdet sign flipped",
       "ds = dz_b * x_b * exp(s) - dlogdet",
       [("s, dlogdet[:, None])", "s, -dlogdet[:, None])")], "gradient"),
    _m("AffineCoupling.backward", "log-det term missing",
       "ds without + dlogdet: the log-det's gradient never reaches the network",
       [("s, dlogdet[:, None])", "s, 0 * dlogdet[:, None])")], "gradient"),
    _m("AffineCoupling.backward", "soft bound not differentiated",
       "dr = ds: forgets the (1 - (s / s_max)^2) of s = s_max tanh(r / s_max)",
       [("self._net_backward(ds, dt, s, net_cache)",
         "self.net.backward(np.concatenate([ds, dt], axis=1), net_cache)")], "gradient"),
    _m("AffineCoupling.inverse_backward", "forward's VJP reused",
       "affine_backward instead of affine_inverse_backward: exp(s) for exp(-s), signs kept",
       [("affine_inverse_backward(dx_b", "affine_backward(dx_b")], "gradient"),
    # ---------------------------------------------------------------- Scaling
    _m("Scaling.backward", "grads overwritten",
       "self.grads['log_s'] = ...: rebinds the array the optimizer holds",
       [('self.grads["log_s"] += ', 'self.grads["log_s"] = ')], "bookkeeping"),
    _m("Scaling.backward", "log-det term missing",
       "dlog_s without sum_n dlogdet",
       [(" + dlogdet.sum()", "")], "gradient"),
    _m("Scaling.backward", "dlogdet averaged",
       "mean_n dlogdet instead of sum_n dlogdet",
       [("dlogdet.sum()", "dlogdet.mean()")], "gradient"),
    _m("Scaling.inverse_backward", "sign of dlog_s flipped",
       "+= instead of -=: the inverse's parameter gradient has the forward's sign",
       [('self.grads["log_s"] -= ', 'self.grads["log_s"] += ')], "gradient"),
    # ---------------------------------------------------------------- sizes hard-coded
    # Sizes copied from a worked example (a batch of 4, 5 features): they pass every draw
    # at or below those sizes, so the registry and the grader draw batches up to 64 and
    # features up to 12 (gradcheck.draw_sizes; the grader's draws are all above 4 and 5).
    _m("Scaling.backward", "first 4 examples only",
       "dlog_s summed over the first 4 examples of the batch (a worked example's batch size): "
       "the parameter gradient of a larger batch is short of the other examples' terms",
       [("(dz * z).sum(axis=0) + dlogdet.sum()", "(dz * z)[:4].sum(axis=0) + dlogdet[:4].sum()")],
       "gradient"),
    _m("Scaling.inverse_backward", "first 4 examples only",
       "dlog_s summed over the first 4 examples of the batch",
       [("(dx * x).sum(axis=0) + dlogdet.sum()", "(dx * x)[:4].sum(axis=0) + dlogdet[:4].sum()")],
       "gradient"),
    _m("Scaling.forward", "first 5 features only",
       "z[:, :5] = x[:, :5] * exp(log_s[:5]): a feature count hard-coded from a worked "
       "example; features beyond the fifth pass through unscaled (while the log-det counts them)",
       [("z = x * np.exp(log_s)", "z = x.copy()\n    z[:, :5] = x[:, :5] * np.exp(log_s[:5])")],
       "round trip"),
    _m("Scaling.inverse", "first 5 features only",
       "x[:, :5] = z[:, :5] * exp(-log_s[:5]): features beyond the fifth are not unscaled",
       [("x = z * np.exp(-log_s)", "x = z.copy()\n    x[:, :5] = z[:, :5] * np.exp(-log_s[:5])")],
       "round trip"),
    # ---------------------------------------------------------------- MAF
    _m("MAF.backward", "dlogdet sign flipped",
       "dalpha = -dz * z + dlogdet",
       [("dalpha -= dlogdet[:, None]", "dalpha += dlogdet[:, None]")], "gradient"),
    _m("MAF.backward", "shift gradient sign",
       "dmu = +dx_direct: forgets the minus of z = (x - mu) exp(-alpha)",
       [("np.concatenate([-dx, dr], axis=1)", "np.concatenate([dx, dr], axis=1)")],
       "gradient"),
    _m("MAF.inverse", "log-det of the wrong direction",
       "the inverse returns -sum alpha, the forward's log-det",
       [("return x, logdet, None", "return x, -logdet, None")], "log-det"),
    _m("MAF.inverse", "one parallel pass",
       "one MADE pass on z instead of the sequential loop: mu, alpha of the wrong inputs",
       [("x, logdet = sequential(self.made, z, self.s_max)",
         "out, _ = self.made._forward(z)\n"
         "    alpha = soft_bound(out[:, self.dim:], self.s_max)\n"
         "    x, logdet = z * np.exp(alpha) + out[:, :self.dim], alpha.sum(axis=1)")],
       "round trip"),
    # ---------------------------------------------------------------- BatchNorm
    _m("BatchNorm.backward", "batch mean not differentiated",
       "training mode without - sum_n dxhat: the mean treated as a constant",
       [("(n * dxhat - dxhat.sum(axis=0)", "(n * dxhat")], "training-mode gradient"),
    _m("BatchNorm.backward", "log-det through the variance forgotten",
       "training mode without S = sum_n dlogdet: log sigma depends on the batch too",
       [("(dxhat * xhat).sum(axis=0) + total)", "(dxhat * xhat).sum(axis=0))")],
       "training-mode gradient"),
    _m("BatchNorm.backward", "batch size hard-coded",
       "training mode with n = 4 (the worked example's batch) instead of N = dz.shape[0]",
       [("n = dz.shape[0]", "n = 4")], "training-mode gradient"),
    _m("BatchNorm.backward", "multiplied by sigma",
       "evaluation mode dx = dxhat * sigma instead of / sigma",
       [("return dxhat / sigma", "return dxhat * sigma")], "gradient"),
    _m("BatchNorm.backward", "log-det term missing",
       "dlog_gamma without sum_n dlogdet",
       [("* gamma + dlogdet.sum()", "* gamma")], "gradient"),
    # ---------------------------------------------------------------- ActNorm
    _m("ActNorm.forward", "H * W factor missing",
       "log-det sum_c log_s: one pixel's log-det, not the image's",
       [("hw * log_s.sum()", "log_s.sum()")], "log-det"),
    _m("ActNorm.backward", "H * W factor missing",
       "dlog_s gets sum_n dlogdet instead of H W sum_n dlogdet",
       [("+ hw * dlogdet.sum()", "+ dlogdet.sum()")], "gradient"),
    _m("ActNorm.backward", "first 5 channels only",
       "db of the first 5 channels (a channel count hard-coded): the others get no gradient",
       [('self.grads["b"] += dz.sum(axis=(0, 2, 3))',
         'self.grads["b"][:5] += dz[:, :5].sum(axis=(0, 2, 3))')], "gradient"),
    _m("ActNorm.inverse_backward", "wrong variable in db",
       "db = -sum dx (the upstream gradient) instead of -sum dz",
       [('self.grads["b"] -= dz.sum(axis=(0, 2, 3))',
         'self.grads["b"] -= dx.sum(axis=(0, 2, 3))')], "gradient"),
    # ---------------------------------------------------------------- Invertible1x1Conv
    _m("Invertible1x1Conv.backward", "W not transposed",
       "dx = W dz per pixel instead of W^T dz",
       [("return _mix(W.T, dz)", "return _mix(W, dz)")], "gradient"),
    _m("Invertible1x1Conv.inverse_backward", "inverse not differentiated",
       "dW = dV: as if the inverse's weight V were W",
       [("self.weight_backward(-V.T @ dV @ V.T,", "self.weight_backward(dV,")], "gradient"),
    # ---------------------------------------------------------------- Logit
    _m("Logit.forward", "log y term missing",
       "log-det sum [log(1 - 2 alpha) - log(1 - y)]: half of the logit's derivative",
       [("- log_y - log_1my).sum(axis=1)", "- log_1my).sum(axis=1)")], "log-det"),
    _m("Logit.forward", "log-det of the first 5 features",
       "the log-det summed over the first 5 features only (a feature count hard-coded)",
       [("- log_y - log_1my).sum(axis=1)", "- log_y - log_1my)[:, :5].sum(axis=1)")],
       "log-det"),
    _m("Logit.backward", "dlogdet sign flipped",
       "dy = (dz + dlogdet (1 - 2 y)) / (y (1 - y))",
       [("(dz - dlogdet[:, None] * (1 - 2 * y))", "(dz + dlogdet[:, None] * (1 - 2 * y))")],
       "gradient"),
    # ---------------------------------------------------------------- LUInvertible1x1Conv
    _m("LUInvertible1x1Conv.log_abs_det", "scales summed, not their logs",
       "sum_c s_c instead of sum_c log|s_c|",
       [('return self.params["log_s"].sum()', 'return np.exp(self.params["log_s"]).sum()')],
       "log-det"),
    _m("LUInvertible1x1Conv.weight_backward", "U_s not transposed",
       "dL_1 = P^T dW U_s instead of P^T dW U_s^T",
       [("dL_1 = PT_dW @ U_s.T", "dL_1 = PT_dW @ U_s")], "gradient"),
    _m("LUInvertible1x1Conv.weight_backward", "log-det gradient missing",
       "dlog_s without dlogabsdet",
       [("+ dlogabsdet)", "+ 0 * dlogabsdet)")], "gradient"),
    _m("LUInvertible1x1Conv.weight_backward", "triangle not masked",
       "dL = dL_1 without tril(., -1): the unused upper part of L gets a gradient",
       [("np.where(self._lower, dL_1, 0)", "dL_1")], "gradient"),
    # ---------------------------------------------------------------- ResidualBlock
    _m("ResidualBlock.inverse", "stopped too early",
       "tolerance 1e-3 instead of self.tol: the round trip is off by about c/(1-c) 1e-3",
       [("z, self.tol, self.max_iter,", "z, 1e-3, self.max_iter,")], "round trip"),
    _m("ResidualBlock.inverse", "log-det of the wrong direction",
       "the inverse returns +log det(I + J_g), the forward's",
       [("return x, -logdet,", "return x, logdet,")], "log-det"),
    _m("ResidualBlock._logdet_backward", "A^{-1} not transposed",
       "d log det A / dA = A^{-1} instead of A^{-T}",
       [("np.linalg.inv(lcache[\"A\"]).transpose(0, 2, 1)", "np.linalg.inv(lcache[\"A\"])")],
       "gradient"),
    _m("ResidualBlock._logdet_backward", "dlogdet sign flipped",
       "dG = -dlogdet A^{-T}",
       [("dG = dlogdet[:, None, None] * np.linalg.inv",
         "dG = -dlogdet[:, None, None] * np.linalg.inv")],
       "gradient"),
    _m("ResidualBlock._logdet_backward", "log-det term missing",
       "dG dropped: only g's value is differentiated",
       [('self.g.jvp_backward(dg, dG, lcache["gcache"])',
         'self.g.jvp_backward(dg, None, lcache["gcache"])')], "gradient"),
    # ---------------------------------------------------------------- RQSpline
    # A student who writes RQSpline.forward writes the knots, the bin search and the formula:
    # the mutant edits the library's helpers, copied into the method (``helpers``).
    _m("RQSpline.forward", "bin of a point on the last knot",
       "bins found by counting every knot above x_0 that the point reaches, x_K = B "
       "included: a point exactly on B gets bin K, one past the last",
       [("return np.sum(v[..., None] >= knots[..., 1:-1], axis=-1)",
         "return np.sum(v[..., None] >= knots[..., 1:], axis=-1)")],
       "raised", helpers=("_bin_of", "rq_forward")),
    _m("RQSpline.forward", "minimum bin width missing",
       "w = softmax(uw): bins can shrink to nothing, and the forward's knots are no longer "
       "the inverse's",
       [("w = min_width + (1 - K * min_width) * _softmax(uw)", "w = _softmax(uw)")],
       "round trip", helpers=("spline_knots", "rq_forward")),
    _m("RQSpline.forward", "derivative of the wrong bin",
       "d_k and d_{k+1} swapped: each bin takes its right knot's derivative at its left end",
       [("d0, d1 = _at(d, k), _at(d, k + 1)", "d0, d1 = _at(d, k + 1), _at(d, k)")],
       "round trip", helpers=("_bin_values", "rq_forward")),
    _m("RQSpline.forward", "tails that do not join",
       "the end derivatives d_0, d_K copied from their neighbours instead of 1: the slope "
       "jumps at -B and B where the identity tails begin",
       [("d = np.concatenate([ones, min_derivative + _softplus(ud + shift), ones], axis=-1)",
         "d = min_derivative + _softplus(np.concatenate([ud[..., :1], ud, ud[..., -1:]], "
         "axis=-1) + shift)")],
       "round trip", helpers=("spline_knots", "rq_forward")),
    _m("RQSpline.inverse", "the textbook root",
       "xi = (-b + sqrt(b^2 - 4ac)) / 2a: loses digits near a knot and is 0/0 wherever a "
       "bin is linear (a = 0), as at the identity every coupling starts from",
       [("xi = np.clip(2 * c / (-b - np.sqrt(discriminant)), 0, 1)",
         "xi = np.clip((-b + np.sqrt(discriminant)) / (2 * a), 0, 1)")],
       "spline_knots", helpers=("rq_inverse",)),
    _m("RQSpline.backward", "minimum's factor missing in the softmax VJP",
       "w = m + (1 - K m) softmax(uw) differentiated as if w = softmax(uw)",
       [("dq = (1 - K * minimum) * du_fraction", "dq = du_fraction")],
       "gradient", helpers=("_parameter_grads", "rq_backward")),
    _m("RQSpline.backward", "cumulative sum not reversed",
       "dw_i from the knots below bin i (a forward cumulative sum) instead of those above",
       [("tail_sums = np.cumsum(interior[..., ::-1], axis=-1)[..., ::-1]",
         "tail_sums = np.cumsum(interior, axis=-1)")],
       "gradient", helpers=("_parameter_grads", "rq_backward")),
    # ---------------------------------------------------------------- TimeField, CNF
    _m("TimeField.jvp_forward", "tanh' missing in the tangents",
       "T_k = M_k instead of M_k * tanh'(a_k): the JVP of the network without its "
       "activations' derivatives, so the trace (and the log-det) is wrong",
       [("h, T = y, M * d1[:, None, :]", "h, T = y, M")], "log-det"),
    _m("TimeField.jvp_forward", "tangent through the wrong rows of W_1",
       "W_1[1:] instead of W_1[:D]: the input written [t, x] for the tangent, [x, t] for the "
       "value, so t's row carries x_D's tangent and x_1's row none",
       [("W_in = W[:self.dim] if k == 0 else W", "W_in = W[1:] if k == 0 else W")],
       "log-det"),
    _m("TimeField.trace_forward", "every entry of J summed",
       "tr = sum_{r, i} G[n, r, i]: the sum of the whole Jacobian, not of its diagonal",
       [('np.einsum("nri,nri->n", V, G)', "G.sum(axis=(1, 2))")], "log-det"),
    # A student who writes CNF.forward writes RK4 too: these mutants edit the library's
    # rk4 and rk4_step (from ode.py; cnf.py imports rk4 by name), copied into the method.
    _m("CNF.forward", "RK4 stages weighted equally",
       "y + h (k1 + k2 + k3 + k4) / 4 instead of y + h (k1 + 2 k2 + 2 k3 + k4) / 6: a "
       "second-order method (sum b_i c_i^2 = 3/8, not 1/3), whose map the library's inverse "
       "(true RK4) does not undo: round trip 3e-5 to 2e-4 at 8 steps",
       [("return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)",
         "return y + h / 4 * (k1 + k2 + k3 + k4)")],
       "round trip", helpers=("rk4", "rk4_step")),
    _m("CNF.forward", "midpoint stage at the step's start",
       "k2 = f(t, y + h/2 k1) instead of f(t + h/2, ...): the field's time dependence "
       "integrated to first order only",
       [("k2 = f(t + h / 2, y + h / 2 * k1)", "k2 = f(t, y + h / 2 * k1)")],
       "round trip", helpers=("rk4", "rk4_step")),
    _m("CNF.forward", "log-det with the wrong sign",
       "logdet = -int_0^1 tr(dv/dx) dt: the inverse's log-det (d log|det J|/dt = +tr)",
       [("y1[:, :self.dim], y1[:, self.dim], dict", "y1[:, :self.dim], -y1[:, self.dim], dict")],
       "log-det"),
    _m("CNF.forward", "one step of size 1",
       "rk4(..., 1) instead of self.n_steps: a single RK4 step over [0, 1]; the cache holds "
       "2 states where backward reads n_steps + 1 (an IndexError), and the inverse takes "
       "n_steps",
       [("0.0, 1.0, self.n_steps, return_states=True", "0.0, 1.0, 1, return_states=True")],
       "raised"),
    _m("CNF.backward", "log-det gradient dropped",
       "dy_n = [dz, 0]: the trace term's gradient never enters (the field trains on z alone)",
       [("dy = np.concatenate([dz, dlogdet[:, None]], axis=1)",
         "dy = np.concatenate([dz, 0 * dlogdet[:, None]], axis=1)")], "gradient"),
    _m("CNF.backward", "dlogdet sign flipped",
       "dy_n = [dz, -dlogdet]",
       [("dy = np.concatenate([dz, dlogdet[:, None]], axis=1)",
         "dy = np.concatenate([dz, -dlogdet[:, None]], axis=1)")], "gradient"),
    _m("CNF.backward", "steps in forward order",
       "for k in range(n): the VJPs of the steps applied first to last",
       [("for k in reversed(range(self.n_steps)):", "for k in range(self.n_steps):")],
       "gradient"),
    _m("CNF.backward", "state after the step",
       "each step's VJP taken at y_{k+1} instead of y_k, the state it started from",
       [("states[k], h, dy)", "states[k + 1], h, dy)")], "gradient"),
    _m("CNF.backward", "RK4 weights of the VJP all 1/4",
       "dk1 = ... = dk4 = h/4 dy_next in the step's VJP: the weights h/6, h/3, h/3, h/6 "
       "of rk4_step replaced by equal ones",
       [("dk1 = dk4 = h / 6 * dy_next", "dk1 = dk4 = h / 4 * dy_next"),
        ("dk2 = dk3 = h / 3 * dy_next", "dk2 = dk3 = h / 4 * dy_next")],
       "gradient", helpers=("rk4_step_backward",)),
    _m("CNF.backward", "stage chain broken",
       "dk3 without + h du4 in the step's VJP: the dependence of stage 4 on k3 dropped",
       [("dk3 = dk3 + h * du", "dk3 = dk3")], "gradient", helpers=("rk4_step_backward",)),
    # ---------------------------------------------------------------- Squeeze
    _m("Squeeze.forward", "plain reshape",
       "x.reshape(N, 4C, H/2, W/2): a permutation, but not the one unsqueeze undoes",
       [("return squeeze(x),",
         "return x.reshape(x.shape[0], 4 * x.shape[1], x.shape[2] // 2, x.shape[3] // 2),")],
       "round trip"),
    _m("Squeeze.backward", "plain reshape",
       "dx = dz.reshape(...) instead of unsqueeze(dz): the gradient lands on the wrong pixels",
       [("return unsqueeze(dz)",
         "return dz.reshape(dz.shape[0], dz.shape[1] // 4, 2 * dz.shape[2], 2 * dz.shape[3])")],
       "gradient"),
)

# Edits the checker cannot catch, by design: the map it checks is still correct.
SURVIVORS = (
    ("MADE.masks: strict hidden masks",
     "> instead of >= between hidden layers removes connections but keeps every output "
     "depending only on earlier features: MAF stays a correct, triangular bijector with exact "
     "log-det and VJPs (a less expressive one). The checker rightly passes it; the grader's "
     "agreement-with-the-library check is what flags it in an assignment."),
    ("SpectralLinear: backprop through the power iteration",
     "Differentiating u and v as functions of W (one power-iteration step inside forward) "
     "changes the gradient only while the iteration has not converged: at the fixed point "
     "d sigma / dW = u v^T either way. The registry sets u, v to the exact singular vectors "
     "and forward never moves them, so the checker sees the same map and gradient; the mutants above "
     "that drop the normalisation's gradient are the ones that matter, and are caught."),
)


def format_score(results):
    """The mutation table: one row per mutant (caught or not, and by what), then the score."""
    width = max(len(r.mutant.name) for r in results)
    lines = [f"{'mutant':{width}s}  caught  first failing check"]
    for r in results:
        first = r.failures[0] if r.failures else "-"
        lines.append(f"{r.mutant.name:{width}s}  {'yes' if r.caught else 'NO':6s}  {first[:90]}")
    caught = sum(r.caught for r in results)
    layers = len({r.mutant.layer for r in results})
    lines.append(f"mutation score: {caught} / {len(results)} caught, over {layers} layers")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m nflows_edu.assignment.mutants
    print(format_score(mutation_score()[2]))
    for name, reason in SURVIVORS:
        print(f"not counted (the checker is right to pass it): {name}")
