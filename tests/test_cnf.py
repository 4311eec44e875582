"""The continuous flow's pieces beyond the registry's checks: the vector field's VJP, its exact
trace and Hutchinson's estimate, the trace's VJP (tanh's second derivative), and the CNF's
O(h^4) discretisation error, which is what the registration's looser bars allow for."""
import numpy as np
import pytest

from nflows_edu import gradcheck
from nflows_edu.bijectors.cnf import CNF, TimeField, hutchinson_probes, tanh_derivatives
from nflows_edu.gradcheck import numerical_gradient, numerical_jacobian, rel_error


def moved_field(rng, dim=3, hidden=(8, 8)):
    return gradcheck.randomize_parameters(TimeField(dim, hidden, rng=rng), rng, 0.5)


def test_tanh_second_derivative_matches_central_differences(rng):
    a = rng.uniform(-3, 3, 50)
    eps = 1e-6
    _, d1, d2 = tanh_derivatives(a)
    np.testing.assert_allclose(d1, (np.tanh(a + eps) - np.tanh(a - eps)) / (2 * eps), atol=1e-9)
    d1_plus, d1_minus = tanh_derivatives(a + eps)[1], tanh_derivatives(a - eps)[1]
    np.testing.assert_allclose(d2, (d1_plus - d1_minus) / (2 * eps), atol=1e-9)


def test_field_vjp_matches_central_differences(rng):
    field = moved_field(rng)
    x, t = rng.standard_normal((5, 3)), 0.37
    v, cache = field.forward(x, t)
    dv = rng.standard_normal(v.shape)
    field.zero_grad()
    dx = field.backward(dv, cache)

    def loss():
        return np.sum(dv * field.forward(x, t)[0])
    assert rel_error(dx, numerical_gradient(loss, x)) < 1e-8
    for name, p, g in field.parameters():
        assert rel_error(g, numerical_gradient(loss, p)) < 1e-8, name


def test_field_depends_on_time(rng):
    field = moved_field(rng)
    x = rng.standard_normal((4, 3))
    assert np.abs(field.forward(x, 0.0)[0] - field.forward(x, 1.0)[0]).max() > 1e-3


def test_exact_trace_is_the_trace_of_the_numerical_jacobian(rng):
    field = moved_field(rng, dim=4)
    x, t = rng.standard_normal((6, 4)), 0.8
    v, tr, _ = field.trace_forward(x, t)
    J = numerical_jacobian(lambda u: field.forward(u, t)[0], x)
    np.testing.assert_allclose(v, field.forward(x, t)[0], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(tr, np.trace(J, axis1=1, axis2=2), atol=1e-8)


@pytest.mark.parametrize("probe", ["exact", "gaussian", "rademacher"])
def test_trace_vjp_matches_central_differences(probe, rng):
    """The gradient of sum(dv * v) + sum(dtr * tr) for x and every parameter, with the
    tangents V held fixed: this is where tanh'' enters."""
    field = moved_field(rng)
    x, t = rng.standard_normal((5, 3)), 0.6
    V = None if probe == "exact" else hutchinson_probes(5, 3, rng, probe)
    v, tr, cache = field.trace_forward(x, t, V)
    dv, dtr = rng.standard_normal(v.shape), rng.standard_normal(tr.shape)
    field.zero_grad()
    dx = field.trace_backward(dv, dtr, cache)

    def loss():
        v, tr, _ = field.trace_forward(x, t, V)
        return np.sum(dv * v) + np.sum(dtr * tr)
    assert rel_error(dx, numerical_gradient(loss, x)) < 1e-8
    for name, p, g in field.parameters():
        assert rel_error(g, numerical_gradient(loss, p)) < 1e-8, name
    # the trace term alone: dv = 0 leaves only the path through the tangents
    field.zero_grad()
    dx_trace = field.trace_backward(np.zeros_like(dv), dtr, cache)
    numeric = numerical_gradient(lambda: np.sum(dtr * field.trace_forward(x, t, V)[1]), x)
    assert np.abs(dx_trace).max() > 1e-3 and rel_error(dx_trace, numeric) < 1e-8


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(kind):
    """The mean of eps^T J eps over 20000 seeded draws at one point is within 3 standard
    errors of the exact trace (and the standard error is small enough to mean something)."""
    rng = np.random.default_rng(7)
    field = moved_field(rng, dim=4)
    x = np.repeat(rng.standard_normal((1, 4)), 20000, axis=0)  # one point, many probes
    _, exact, _ = field.trace_forward(x[:1], 0.3)
    _, estimates, _ = field.trace_forward(x, 0.3, hutchinson_probes(20000, 4, rng, kind))
    se = estimates.std(ddof=1) / np.sqrt(estimates.size)
    assert abs(estimates.mean() - exact[0]) <= 3 * se
    assert se < 0.05 * max(abs(exact[0]), 0.1)


def test_field_and_probes_refuse_bad_input(rng):
    field = moved_field(rng)
    with pytest.raises(ValueError, match="TimeField.*shape"):
        field.forward(np.zeros((2, 4)), 0.0)
    with pytest.raises(ValueError, match="TimeField.*time"):
        field.forward(np.zeros((2, 3)), np.nan)
    with pytest.raises(ValueError, match="hutchinson_probes"):
        hutchinson_probes(2, 3, rng, "uniform")
    with pytest.raises(ValueError, match="CNF.*n_steps"):
        CNF(2, n_steps=0)


def discretisation_errors(n_steps, seed=3):
    """(round trip, log-det against slogdet of the numerical Jacobian) of a CNF with the
    registry's field, at n_steps."""
    rng = np.random.default_rng(seed)
    layer = gradcheck.randomize_parameters(CNF(3, (8, 8), n_steps, rng=rng), rng, 0.3)
    x = rng.standard_normal((16, 3))
    z, logdet, _ = layer.forward(x)
    roundtrip = np.abs(layer.inverse(z)[0] - x).max()
    J = numerical_jacobian(lambda u: layer.forward(u)[0], x)
    return roundtrip, np.abs(logdet - np.linalg.slogdet(J)[1]).max()


def test_cnf_discretisation_errors_have_rk4s_order():
    """Doubling n_steps divides the log-det error by about 2^4 = 16 (RK4's global order) and
    the round-trip error by about 2^5 = 32: a step's leading local error C h^5 changes sign
    with h, so the inverse's step -h undoes it to leading order. The bars the registration
    loosens hold these errors, not a bug of lower order (a wrong sign or stage would not
    shrink like this)."""
    errors = [discretisation_errors(n) for n in (4, 8, 16, 32)]
    for (rt_coarse, ld_coarse), (rt_fine, ld_fine) in zip(errors, errors[1:]):
        assert 24 < rt_coarse / rt_fine < 40, errors
    for (_, ld_coarse), (_, ld_fine) in zip(errors[:2], errors[1:3]):  # above the central
        assert 12 < ld_coarse / ld_fine < 24, errors     # differences' 1e-9 floor
    # and in the limit the map is the ODE's flow, with the trace integral as its log-det
    rt64, ld64 = discretisation_errors(64)
    assert rt64 < 1e-11 and ld64 < 1e-8


def test_cnf_logdet_sign_and_directions(rng):
    """forward's logdet is +int tr dt (log|det dz/dx|), inverse's is minus it; and the cache
    counts the field evaluations."""
    layer = gradcheck.randomize_parameters(CNF(2, (8,), 16, rng=rng), rng, 0.5)
    x = rng.standard_normal((8, 2))
    z, ld_f, cache = layer.forward(x)
    J = numerical_jacobian(lambda u: layer.forward(u)[0], x)
    np.testing.assert_allclose(ld_f, np.linalg.slogdet(J)[1], atol=1e-5)
    assert np.abs(ld_f).max() > 0.05
    _, ld_g, cache_g = layer.inverse(z)
    np.testing.assert_allclose(ld_g, -ld_f, atol=1e-5)
    assert cache["nfe"] == cache_g["nfe"] == 4 * 16 and len(cache["states"]) == 17


def test_backward_is_exact_for_the_discrete_map_with_a_steep_field(rng):
    """With the default, larger perturbation and only 2 steps the map is far from the ODE's
    flow (round trip ~1e-2), yet its gradients match its own central differences."""
    layer = gradcheck.randomize_parameters(CNF(3, (8,), 2, rng=rng), rng, 1.0)
    x = rng.standard_normal((6, 3))
    z, _, _ = layer.forward(x)
    assert np.abs(layer.inverse(z)[0] - x).max() > 1e-4
    for direction in ("forward", "inverse"):
        errors, problems = gradcheck.vjp_errors(layer, x, rng, direction)
        assert not problems and max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ffjord_saved_and_loaded_reproduces_outputs_exactly(dtype, rng, tmp_path):
    import nflows_edu as nf
    from nflows_edu import models
    flow = gradcheck.randomize_parameters(
        models.ffjord(2, hidden=(8, 8), n_steps=4, n_blocks=2, rng=rng, dtype=dtype), rng, 0.2)
    assert flow.config == dict(model="ffjord", dim=2, hidden=[8, 8], n_steps=4, n_blocks=2,
                               dtype=np.dtype(dtype).name, gradient="discrete", adjoint_tol=None,
                               trace="exact")
    loaded = nf.load(nf.save(flow, tmp_path / "m.npz"))
    x = rng.standard_normal((10, 2))
    assert flow.log_prob(x).dtype == dtype
    np.testing.assert_array_equal(loaded.log_prob(x), flow.log_prob(x))
    np.testing.assert_array_equal(loaded.sample(7, np.random.default_rng(9)),
                                  flow.sample(7, np.random.default_rng(9)))


def test_ffjord_refuses_bad_arguments():
    from nflows_edu import models
    with pytest.raises(ValueError, match="ffjord.*dim"):
        models.ffjord(0)
    with pytest.raises(ValueError, match="ffjord.*blocks"):
        models.ffjord(2, n_blocks=0)
    with pytest.raises(ValueError, match="CNF.*n_steps"):
        models.ffjord(2, n_steps=2.5)


def test_ffjord_smoke_training_on_8gaussians_lowers_the_loss():
    """300 Adam steps of maximum likelihood (a small field and 4 RK4 steps, to stay quick):
    the mean loss of the last 50 steps is well below that of the first 50."""
    from nflows_edu import datasets, models, train
    rng = np.random.default_rng(0)
    flow = models.ffjord(2, hidden=(16, 16), n_steps=4, rng=rng)
    x = datasets.toy("8gaussians", 5000, rng)
    history = train.fit(flow, x, steps=300, batch_size=128, lr=5e-3, rng=rng, progress=False)
    loss = np.asarray(history["loss"])
    assert loss[-50:].mean() < loss[:50].mean() - 0.5, (loss[:50].mean(), loss[-50:].mean())


# ------------------------------------------------------------------ Hutchinson's trace in the CNF
def hutchinson_cnf(rng, dim=3):
    layer = CNF(dim, (8, 8), n_steps=4, rng=rng, trace="hutchinson")
    return gradcheck.randomize_parameters(layer, rng, 0.3)


def test_hutchinson_cnf_logdet_is_unbiased_and_eval_is_exact():
    """Training mode: one Rademacher probe per row, kept through the solve. Over 20000 rows at
    one point the mean log-det is within 3 standard errors of the exact-trace log-det, which
    evaluation mode returns (the same numbers at every call)."""
    rng = np.random.default_rng(11)
    layer = hutchinson_cnf(rng)
    x = np.repeat(rng.standard_normal((1, 3)), 20000, axis=0)
    z, estimates, cache = layer.forward(x)
    assert cache["V"].shape == (20000, 1, 3) and np.unique(estimates).size == 4  # 2^3 signs, +-
    layer.eval()
    z_exact, exact, cache_exact = layer.forward(x[:2])
    assert cache_exact["V"] is None
    np.testing.assert_array_equal(layer.forward(x[:2])[1], exact)
    np.testing.assert_allclose(z[:2], z_exact, atol=1e-12)  # the probes touch only the log-det
    se = estimates.std(ddof=1) / np.sqrt(estimates.size)
    assert abs(estimates.mean() - exact[0]) <= 3 * se and se < 0.05 * abs(exact[0]), (
        estimates.mean(), exact[0], se)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_hutchinson_cnf_gradients_are_exact_for_fixed_probes(direction, rng):
    """With the probes held fixed, the estimate is a deterministic map: its VJPs (input and
    every parameter, both directions) match its central differences."""
    layer = hutchinson_cnf(rng)
    x = rng.standard_normal((5, 3))
    exact = layer.eval().forward(x)[1]
    V = hutchinson_probes(5, 3, rng, "rademacher")
    layer.train()._probes = lambda u: V
    assert np.abs(layer.forward(x)[1] - exact).max() > 1e-3   # an estimate, not the trace
    errors, problems = gradcheck.vjp_errors(layer, x, rng, direction)
    assert not problems and max(errors.values()) < 1e-7, errors


def test_hutchinson_cnf_parameter_gradient_is_unbiased():
    """The gradient of the mean log-det over many probes (20 chunks of 1000 rows at one point)
    is within 4.5 standard errors of the exact trace's gradient, for every parameter."""
    rng = np.random.default_rng(5)
    layer = hutchinson_cnf(rng, dim=2)
    x = np.repeat(rng.standard_normal((1, 2)), 1000, axis=0)

    def logdet_gradient(mode):
        layer.train(mode == "hutchinson")
        layer.zero_grad()
        _, _, cache = layer.forward(x)
        layer.backward(np.zeros_like(x), np.full(len(x), 1.0 / len(x)), cache)
        return np.concatenate([g.ravel() for _, _, g in layer.parameters()])

    exact = logdet_gradient("exact")
    chunks = np.array([logdet_gradient("hutchinson") for _ in range(20)])
    se = chunks.std(axis=0, ddof=1) / np.sqrt(len(chunks))
    z = np.abs(chunks.mean(axis=0) - exact) / np.maximum(se, 1e-12)
    assert z.max() < 4.5, z.max()
    assert np.median(se / np.maximum(np.abs(exact), 1e-3)) < 0.2  # the test can see a bias


def test_cnf_refuses_an_unknown_trace(rng):
    with pytest.raises(ValueError, match="CNF.*trace"):
        CNF(2, trace="hutchinsons", rng=rng)


def test_hutchinson_adjoint_uses_the_forward_probes(rng):
    """The adjoint's backward solve takes the trace with the forward's probes: at 32 steps its
    gradient matches discretise-then-optimise through the same probes (both within RK4's
    error of the continuous gradient), and not the exact trace's gradient."""
    x = rng.standard_normal((4, 2))
    V = hutchinson_probes(4, 2, rng, "rademacher")
    grads = {}
    for gradient in ("discrete", "adjoint", "exact"):
        layer = CNF(2, (8, 8), n_steps=32, rng=np.random.default_rng(3), trace="hutchinson",
                    gradient="discrete" if gradient == "exact" else gradient)
        gradcheck.randomize_parameters(layer, np.random.default_rng(4), 0.3)
        if gradient != "exact":
            layer._probes = lambda u: V
        _, _, cache = layer.eval().forward(x) if gradient == "exact" else layer.forward(x)
        layer.zero_grad()
        dx = layer.backward(np.zeros_like(x), np.ones(4), cache)
        grads[gradient] = np.concatenate([dx.ravel()] + [g.ravel() for _, _, g in
                                                         layer.parameters()])
    assert rel_error(grads["adjoint"], grads["discrete"]) < 1e-6
    assert rel_error(grads["exact"], grads["discrete"]) > 1e-3
