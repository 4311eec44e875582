r"""The checks behind grading, the walkthrough notebook and the mutation tests.

Everything starts from a registry entry (``gradcheck.register``): the layer is built at a
random size with its parameters moved off their initial values, then every instance of the
exercise's class inside it (the layer itself, or the ``Linear`` layers of its network) is given
the student's class (``swap_classes``). So a student's ``Linear.backward`` is graded by the
same checks as a coupling layer, inside one.

* ``registry_checks``: ``gradcheck.check_bijector`` on draws of each registry entry, plus
  the exercise's extra checks (``EXTRA_CHECKS``);
* ``agreement``: the student's layer against the library's own on the same parameters and
  inputs (outputs, log-dets, VJPs, parameter gradients);
* ``training``: a short maximum-likelihood run with each, from the same start, on the same data.

Every draw is built by ``build_pair`` at sizes from the upper part of the registration's
ranges (for a vector layer 6 to 12 features and 16 to 64 examples): a batch size or a
feature count hard-coded from a worked example (``[:4]``, the first 5 features) fails every
draw, not only the draws that happen to be large. Small sizes are the registry tests' and
``nflows-edu check``'s (1 to 64 examples, log-uniform, 2 to 12 features).
"""
import copy

import numpy as np

from .. import gradcheck
from ..core import Inverse

AGREE_TOL = 1e-8  # rel_error between the student's and the library's outputs
TRAIN_TOL = 1e-6  # |L_student - L_library| / (1 + |L_library|) after the training run


# ------------------------------------------------------------------ building
def swap_classes(module, old, new, setup=None):
    """Give every sub-module of exact type ``old`` (the module included) the class ``new``
    (a subclass of ``old``), then run ``setup`` on it; returns how many were swapped."""
    count = 0
    for m in list(module.modules()):
        if type(m) is old:
            m.__class__ = new
            if setup is not None:
                setup(m)
            count += 1
    return count


def build_pair(entry_name, old, new, rng, setup=None, n=None):
    r"""``(reference, student, x)``: registry layer ``entry_name`` built from ``rng``, a deep
    copy with ``old`` swapped for ``new``, and a batch in its domain.

    The sizes are the upper part of the registration's ranges (``gradcheck.draw_sizes`` with
    ``large=True``: for a vector layer 6 to 12 features and 16 to 64 examples), so that every
    hidden draw exceeds a batch size or a feature count hard-coded from a worked example
    (``[:4]``, ``range(5)``); ``n`` fixes the batch. Raises ``ValueError`` if the layer holds
    no instance of ``old``.
    """
    reference, x = gradcheck.make_layer(entry_name, rng, n=n, large=True)
    student = copy.deepcopy(reference)
    if not swap_classes(student, old, new, setup):
        raise ValueError(f"registry entry {entry_name!r} holds no {old.__name__}")
    return reference, student, x


def failures(report):
    """What failed in a ``CheckReport``, as short names with the error and its threshold
    (the report's own: a registration may loosen the round trip and log-det bars)."""
    th = report.thresholds
    out = []
    if not report.roundtrip <= th["roundtrip"]:
        out.append(f"round trip {report.roundtrip:.1e} > {th['roundtrip']:.0e}")
    ld = max(report.logdet, report.logdet_cancel)
    if not ld <= th["logdet"]:
        out.append(f"log-det {ld:.1e} > {th['logdet']:.0e}")
    for direction, errs in report.grad_errors.items():
        bad = {k: v for k, v in errs.items() if not v <= th["grad"]}
        if bad:
            worst = max(bad, key=bad.get)
            out.append(f"{direction} gradient d{worst} {bad[worst]:.1e} > {th['grad']:.0e}")
    out += [f"{d} VJP not implemented" for d, s in report.status.items() if s == "not implemented"]
    out += [f"bookkeeping: {p}" for p in report.problems]
    return out


def isolate(ex, cls):
    r"""``cls`` with every *other* exercise method of its class put back to the library's, so
    each exercise is graded on its own (an unwritten ``forward`` does not cost ``backward``
    its marks; ``backward`` then receives the library's cache)."""
    from .catalogue import exercises
    others = {e.method: getattr(ex.cls, e.method) for e in exercises()
              if e.cls is ex.cls and e.name != ex.name}
    return type(cls.__name__, (cls,), {**others, "__module__": cls.__module__})


# ------------------------------------------------------------------ extra checks
def batchnorm_train_check(cls, rng, setup=None):
    r"""``BatchNorm.backward`` in training mode: each z_n depends on the whole batch through
    its mean and variance, so the registry's per-example checks do not see it. The loss
    L = sum(dz * z) + sum(dlogdet * logdet) of the whole batch is differentiated by central
    differences with respect to x and both parameters, at 6 to 12 features and 16 to 64
    examples (sizes no worked example hard-codes). Returns a list of failures."""
    from ..bijectors.normalization import BatchNorm
    d = int(rng.integers(gradcheck.LARGE_DIM, gradcheck.MAX_DIM + 1))
    n = gradcheck.log_uniform_int(rng, gradcheck.LARGE_BATCH, gradcheck.MAX_BATCH)
    layer = BatchNorm(d)
    layer.__class__ = cls
    gradcheck.randomize_parameters(layer, rng, 0.5)
    x = rng.standard_normal((n, d)) * np.exp(rng.standard_normal(d)) + rng.standard_normal(d)
    z, logdet, cache = layer.forward(x)
    dz, dld = rng.standard_normal(z.shape), rng.standard_normal(n)

    def loss():
        zz, ll, _ = layer.forward(x_work)
        return np.sum(zz * dz) + np.sum(ll * dld)

    layer.zero_grad()
    dx = layer.backward(dz, dld, cache)
    problems = gradcheck._bookkeeping(layer, lambda: layer.backward(dz, dld, cache), dx,
                                      "backward (training mode)")
    layer.zero_grad()
    dx = layer.backward(dz, dld, cache)
    x_work = x.copy()
    errors = gradcheck._gradient_errors(layer, loss, x_work, dx, 1e-6)
    out = [f"training-mode gradient d{k} {v:.1e} > {gradcheck.THRESHOLDS['grad']:.0e}"
           for k, v in errors.items() if not v <= gradcheck.THRESHOLDS["grad"]]
    return out + [f"bookkeeping: {p}" for p in problems]


def spline_knots_check(cls, rng, setup=None):
    r"""``RQSpline`` where random draws never go: the identity spline (every parameter 0, as
    each coupling starts) and points exactly on the knots.

    At the identity every bin is linear with slope 1, so the quadratic of the inverse has
    a = 0: the textbook root ``(-b + sqrt(b^2 - 4ac)) / 2a`` is 0/0 there, the stable
    ``2c / (-b - sqrt(...))`` is exact. On the knots, x_0 = -B included, ``g`` and ``g'`` are
    continuous, so any bin convention gives z = y_k and log-det log d_k; a bin search that
    puts -B in "bin -1" does not. The library's own ``RQSpline`` on the same parameters is the
    reference; values are compared, not gradients (at a knot the gradient of log g' depends on
    which side's bin the point is given). Returns a list of failures."""
    from ..bijectors.spline import RQSpline, spline_knots
    d = int(rng.integers(gradcheck.LARGE_DIM, gradcheck.MAX_DIM + 1))
    k_bins = int(rng.integers(3, 9))
    out = []
    for label, scale in (("identity spline", 0.0), ("points on the knots", 0.5)):
        reference = RQSpline(d, n_bins=k_bins, bound=2.0)
        gradcheck.randomize_parameters(reference, rng, scale)
        student = copy.deepcopy(reference)
        student.__class__ = cls
        xk, yk, _ = spline_knots(*(reference.params[k] for k in ("uw", "uh", "ud")), 2.0)
        x = (xk.T if scale else np.linspace(-2.5, 2.5, 2 * k_bins + 1)[:, None]
             * np.ones(d))  # (K + 1, D) knots, or a grid through both tails
        z = yk.T if scale else x
        for direction, point in (("forward", x), ("inverse", z)):
            want, want_ld, _ = getattr(reference, direction)(point)
            got, got_ld, _ = getattr(student, direction)(point)
            err = max(np.abs(got - want).max(), np.abs(got_ld - want_ld).max())
            if not err <= 1e-10:
                out.append(f"{label}: {direction} differs from the library's by {err:.1e} "
                           f"(> 1e-10)")
    return out


EXTRA_CHECKS = {"batchnorm_train": batchnorm_train_check, "spline_knots": spline_knots_check}


# ------------------------------------------------------------------ the three graded checks
def registry_checks(ex, cls, rng, draws=2, entries=None):
    r"""``check_bijector`` on ``draws`` builds of each registry entry of exercise ``ex`` with
    ``cls`` swapped in, then each extra check ``draws`` times.

    Returns a list of ``(label, failures)``, one per draw; an exception is a failure that
    names it.
    """
    results = []
    for entry in entries or ex.registry:
        for k in range(draws):
            label = f"{entry} draw {k + 1}"
            try:
                _, student, x = build_pair(entry, ex.cls, cls, rng, ex.setup)
                report = gradcheck.check_bijector(student, x, rng, name=entry,
                                                  **gradcheck.check_options(entry))
                report.thresholds = gradcheck.thresholds(entry)[0]   # the registration's bars
                results.append((label, failures(report)))
            except Exception as err:  # noqa: BLE001  (a student's bug, reported)
                results.append((label, [f"raised {type(err).__name__}: {err}"]))
    for name in ex.extra:
        for k in range(draws):
            label = f"{name} draw {k + 1}"
            try:
                results.append((label, EXTRA_CHECKS[name](cls, rng, ex.setup)))
            except Exception as err:  # noqa: BLE001
                results.append((label, [f"raised {type(err).__name__}: {err}"]))
    return results


def _calls(layer, x, rng):
    r"""Everything the layer computes from x: forward, inverse of its z, both VJPs (declared
    ones) with fixed upstream gradients, and the parameter gradients they add."""
    out = {}
    z, ld, cache = layer.forward(x)
    out["forward z"], out["forward logdet"] = z, ld
    xb, ldi, icache = layer.inverse(z)
    out["inverse x"], out["inverse logdet"] = xb, ldi
    for direction, (a, b, c) in (("forward", (z, ld, cache)), ("inverse", (xb, ldi, icache))):
        if direction not in layer.vjps:
            continue
        d_out, d_ld = rng.standard_normal(np.shape(a)), rng.standard_normal(np.shape(b))
        layer.zero_grad()
        vjp = layer.backward if direction == "forward" else layer.inverse_backward
        out[f"{vjp.__name__} result"] = vjp(d_out, d_ld, c)
        for name, _, g in layer.parameters():
            out[f"{vjp.__name__} d{name}"] = g.copy()
    layer.zero_grad()
    return out


def agreement(ex, cls, rng, draws=2):
    r"""The student's layer and the library's on the same parameters, inputs and upstream
    gradients, for ``draws`` builds of each registry entry. Returns ``(label, failures)``
    per draw; a shape that differs from the library's is a failure naming both."""
    results = []
    for entry in ex.registry:
        for k in range(draws):
            label = f"{entry} draw {k + 1}"
            try:
                reference, student, x = build_pair(entry, ex.cls, cls, rng, ex.setup)
                seed = int(rng.integers(2**31))
                want = _calls(reference, x, np.random.default_rng(seed))
                got = _calls(student, x, np.random.default_rng(seed))
                bad = []
                for key, value in want.items():
                    mine = np.asarray(got[key])
                    if mine.shape != np.shape(value):
                        bad.append(f"{key}: shape {mine.shape}, expected {np.shape(value)}")
                        continue
                    err = gradcheck.rel_error(mine, value)
                    if not err <= AGREE_TOL:
                        bad.append(f"{key} differs from the library's by {err:.1e} > "
                                   f"{AGREE_TOL:.0e}")
                results.append((label, bad))
            except Exception as err:  # noqa: BLE001
                results.append((label, [f"raised {type(err).__name__}: {err}"]))
    return results


def _nll_step(layer, x):
    """Mean negative log-likelihood under a standard normal base, and its gradients."""
    z, logdet, cache = layer.forward(x)
    n = x.shape[0]
    sq = 0.5 * (z.reshape(n, -1) ** 2).sum(axis=1)
    loss = float(np.mean(sq - logdet) + 0.5 * z[0].size * np.log(2 * np.pi))
    layer.zero_grad()
    layer.backward(z / n, np.full(n, -1.0 / n), cache)
    return loss


def train_run(layer, x, steps=25, lr=1e-2):
    """``steps`` full-batch Adam steps on the NLL of ``x``; returns the loss curve."""
    from ..optim import Adam
    opt = Adam(layer.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        losses.append(_nll_step(layer, x))
        opt.step()
    losses.append(_nll_step(layer, x))
    return losses


def training(ex, cls, rng, steps=25, n=64):
    r"""Train the library's layer and the student's, from the same start on the same data.

    The layer of the first registry entry is trained by maximum likelihood in training mode
    (``train()``); an exercise on an inverse method trains ``Inverse(layer)`` (the data go
    through ``inverse``) when the layer provides that VJP. After the run, samples (the
    trained map's other direction applied to the same points) are compared too.
    Returns ``(ok, message)``.
    """
    entry = ex.registry[0]
    reference, student, x = build_pair(entry, ex.cls, cls, rng, ex.setup, n=n)
    if ex.method.startswith("inverse") and "inverse" in reference.vjps:
        reference, student = Inverse(reference), Inverse(student)
    reference.train()
    student.train()
    x = reference.inverse(x)[0] if isinstance(reference, Inverse) else x
    want = train_run(reference, x, steps)
    got = train_run(student, x, steps)
    tol = TRAIN_TOL * (1 + abs(want[-1]))
    msg = (f"{entry}: NLL {want[0]:.4f} -> {want[-1]:.6f} (library), {got[0]:.4f} -> "
           f"{got[-1]:.6f} (yours) after {steps} Adam steps")
    if not (np.isfinite(got[-1]) and abs(got[-1] - want[-1]) <= tol):
        return False, msg + f"; differs by more than {tol:.1e}"
    # the shape of z (Squeeze changes it); both layers see the same calls (BatchNorm's
    # running averages move with every training-mode forward)
    probe = rng.standard_normal(np.shape(reference.forward(x)[0]))
    student.forward(x)
    samples_ref, samples = reference.inverse(probe)[0], student.inverse(probe)[0]
    err = gradcheck.rel_error(samples, samples_ref)
    if not err <= AGREE_TOL:
        return False, msg + f"; but its samples differ from the library's by {err:.1e}"
    return True, msg


# ------------------------------------------------------------------ the notebook's feedback
def feedback(name, module_or_class, draws=2, seed=None):
    r"""What the walkthrough notebook prints after an exercise: the registry checks of the
    exercise ``name`` on the student's class, each error next to its threshold.

    ``module_or_class`` is the student's module (the class is found by name) or the class.
    Returns True if every draw passed.
    """
    from .catalogue import get_exercise
    ex = get_exercise(name)
    cls = getattr(module_or_class, ex.class_name, None) if not isinstance(
        module_or_class, type) else module_or_class
    if cls is None or not issubclass(cls, ex.cls):
        print(f"{name}: no subclass of {ex.cls.__name__} called {ex.class_name} found")
        return False
    cls = isolate(ex, cls)
    rng = np.random.default_rng(seed)
    th = gradcheck.THRESHOLDS
    print(f"{name}: the checks (pass if at most: round trip {th['roundtrip']:.0e}, "
          f"log-det {gradcheck.THRESHOLDS['logdet']:.0e}, gradients "
          f"{gradcheck.THRESHOLDS['grad']:.0e})")
    ok = True
    for entry in ex.registry:
        for k in range(draws):
            try:
                _, student, x = build_pair(entry, ex.cls, cls, rng, ex.setup)
                report = gradcheck.check_bijector(student, x, rng, name=entry,
                                                  **gradcheck.check_options(entry))
                report.thresholds = gradcheck.thresholds(entry)[0]   # the registration's bars
                print(report)
                ok &= report.passed()
            except NotImplementedError as err:
                print(f"{entry}: not written yet ({err})")
                return False
            except Exception as err:  # noqa: BLE001
                print(f"{entry}: raised {type(err).__name__}: {err}")
                ok = False
    for extra in ex.extra:
        try:
            bad = EXTRA_CHECKS[extra](cls, rng, ex.setup)
        except Exception as err:  # noqa: BLE001
            bad = [f"raised {type(err).__name__}: {err}"]
        print(f"{extra}: " + ("pass" if not bad else "; ".join(bad)))
        ok &= not bad
    print(f"{name}: {'PASS' if ok else 'FAIL'}")
    return ok
