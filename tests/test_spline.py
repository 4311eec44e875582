"""The rational-quadratic spline on its own: identity at zero, knots, tails, the stable inverse,
every VJP against central differences at strongly non-uniform bins, and bad input. (The
layers also go through the registry's checks in test_bijectors.py.)"""
import numpy as np
import pytest

from nflows_edu import gradcheck, io, models
from nflows_edu.bijectors import RQSpline, SplineCoupling
from nflows_edu.bijectors import spline as S
from nflows_edu.gradcheck import rel_error


def random_spline(rng, n=6, dim=3, K=5, scale=1.5):
    """Per-point parameters with bins of very different widths, heights and slopes."""
    return (scale * rng.standard_normal((n, dim, K)), scale * rng.standard_normal((n, dim, K)),
            scale * rng.standard_normal((n, dim, K - 1)))


def test_zero_parameters_give_the_identity(rng):
    x = rng.uniform(-5, 5, (20, 2))
    uw, uh, ud = np.zeros((20, 2, 4)), np.zeros((20, 2, 4)), np.zeros((20, 2, 3))
    z, logdet, _ = S.rq_forward(x, uw, uh, ud, bound=3.0)
    assert np.abs(z - x).max() < 1e-14 and np.abs(logdet).max() < 1e-14
    flow = models.nsf(2, rng=rng)
    assert np.abs(flow.bijector.forward(x)[0] - x).max() < 1e-14


def test_knots_run_from_minus_b_to_b_with_unit_end_derivatives(rng):
    uw, uh, ud = random_spline(rng)
    xk, yk, d = S.spline_knots(uw, uh, ud, 2.5)
    for knots in (xk, yk):
        assert np.all(knots[..., 0] == -2.5) and np.all(knots[..., -1] == 2.5)
        assert np.all(np.diff(knots, axis=-1) >= 2 * 2.5 * S.DEFAULT_MIN * (1 - 1e-12))
    assert np.all(d[..., 0] == 1) and np.all(d[..., -1] == 1) and np.all(d > S.DEFAULT_MIN)


def test_round_trip_log_det_and_monotone(rng):
    uw, uh, ud = random_spline(rng, n=400, dim=1, K=7)
    x = rng.uniform(-3.5, 3.5, (400, 1))
    z, logdet, _ = S.rq_forward(x, uw, uh, ud, bound=3.0)
    x_back, logdet_inv, _ = S.rq_inverse(z, uw, uh, ud, bound=3.0)
    # round-off times the inverse's slope, up to 1/min(g') in the flattest bins
    assert np.abs(x_back - x).max() < 1e-10
    assert np.abs(logdet + logdet_inv).max() < 1e-10
    eps = 1e-6
    slope = (S.rq_forward(x + eps, uw, uh, ud, 3.0)[0] - S.rq_forward(x - eps, uw, uh, ud, 3.0)[0])
    assert np.all(slope > 0)
    assert np.abs(np.log(slope / (2 * eps)) - logdet).max() < 1e-5


def test_the_inverse_is_accurate_next_to_a_knot(rng):
    """Points a hair above y_k: the root formula 2c / (-b - sqrt(b^2 - 4ac)) keeps its relative
    accuracy there, where (-b + sqrt(...)) / 2a would cancel."""
    uw, uh, ud = random_spline(rng, n=1, dim=1, K=6)
    xk, yk, _ = S.spline_knots(uw, uh, ud, 3.0)
    for k in range(1, 6):
        for offset in (1e-13, 1e-10, 1e-7):
            x = np.array([[xk[0, 0, k] + offset]])
            z, _, _ = S.rq_forward(x, uw, uh, ud, 3.0)
            x_back, _, _ = S.rq_inverse(z, uw, uh, ud, 3.0)
            # relative to the distance from the knot, not to |x|
            assert abs(x_back[0, 0] - x[0, 0]) <= 1e-3 * offset + 1e-15


def test_tails_are_the_identity_with_no_parameter_gradient(rng):
    uw, uh, ud = random_spline(rng, n=4, dim=2)
    x = np.array([[-7.0, 3.5], [4.0, -3.0001], [10.0, -10.0], [3.2, 5.0]])
    z, logdet, cache = S.rq_forward(x, uw, uh, ud, bound=3.0)
    assert np.array_equal(z, x) and np.all(logdet == 0)
    dz = rng.standard_normal(x.shape)
    dx, duw, duh, dud = S.rq_backward(dz, rng.standard_normal(x.shape), cache)
    assert np.array_equal(dx, dz)
    assert not duw.any() and not duh.any() and not dud.any()
    x_inv, logdet_inv, cache = S.rq_inverse(x, uw, uh, ud, bound=3.0)
    assert np.array_equal(x_inv, x) and np.all(logdet_inv == 0)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_every_vjp_against_central_differences(direction, rng):
    """dx, duw, duh, dud of both directions, with points inside and in the tails, and bins
    of very different sizes. (Points on a knot or on +-B, where g'' jumps, are in
    ``test_a_point_on_a_knot``: there central differences are only O(eps) accurate.)"""
    uw, uh, ud = random_spline(rng, n=8, dim=2, K=5, scale=1.0)
    x = rng.normal(0.0, 2.5, (8, 2))
    x[np.abs(np.abs(x) - 3.0) < 0.05] += 0.1
    apply = S.rq_forward if direction == "forward" else S.rq_inverse
    vjp = S.rq_backward if direction == "forward" else S.rq_inverse_backward
    if direction == "inverse":
        x = S.rq_forward(x, uw, uh, ud, 3.0)[0]
    out, logdet, cache = apply(x, uw, uh, ud, 3.0)
    dout, dlogdet = rng.standard_normal(out.shape), rng.standard_normal(out.shape)
    analytic = vjp(dout, dlogdet, cache)
    arrays = [x, uw, uh, ud]

    def loss():
        o, ld, _ = apply(*arrays, 3.0)
        return np.sum(o * dout) + np.sum(ld * dlogdet)

    for name, a, g in zip(["x", "uw", "uh", "ud"], arrays, analytic):
        assert g.shape == a.shape
        assert rel_error(g, gradcheck.numerical_gradient(loss, a)) < 1e-6, name


def test_a_point_on_a_knot(rng):
    """On a knot x_k the point is in bin k (B in the last bin): z = y_k, log g' = log d_k,
    dz/dx = d_k from both sides (the spline is C^1) and the parameter gradients match central
    differences; log g' has a kink there, and its gradient is bin k's: the right-hand
    difference (the left-hand one at B)."""
    uw, uh, ud = random_spline(rng, n=1, dim=1, K=5)
    xk, yk, d = S.spline_knots(uw, uh, ud, 3.0)
    for k in range(0, 6):  # the interior knots, and the ends -B, B
        x = np.array([[xk[0, 0, k]]])
        z, logdet, cache = S.rq_forward(x, uw, uh, ud, 3.0)
        assert abs(z[0, 0] - yk[0, 0, k]) < 1e-14
        assert abs(logdet[0, 0] - np.log(d[0, 0, k])) < 1e-12
        dx, duw, duh, dud = S.rq_backward(np.ones((1, 1)), np.zeros((1, 1)), cache)
        arrays = [x, uw, uh, ud]

        def value():
            return S.rq_forward(*arrays, 3.0)[0].sum()

        assert abs(dx[0, 0] - d[0, 0, k]) <= 1e-12 * d[0, 0, k]  # g'(x_k) = d_k from both sides
        for name, a, g in zip(["uw", "uh", "ud"], arrays[1:], (duw, duh, dud)):
            # moving a knot moves the point across it, where g'' jumps: differences with a
            # small step (their error is O(eps) here, not O(eps^2))
            assert rel_error(g, gradcheck.numerical_gradient(value, a, eps=1e-8)) < 1e-5, (k, name)
        dx_logdet = S.rq_backward(np.zeros((1, 1)), np.ones((1, 1)), cache)[0]
        h = 1e-7 if k < 5 else -1e-7  # B itself belongs to the last bin: its left side
        one_sided = (S.rq_forward(x + h, uw, uh, ud, 3.0)[1] - logdet) / h
        assert abs(dx_logdet[0, 0] - one_sided[0, 0]) < 1e-4 * max(1, abs(one_sided[0, 0]))


def test_the_layers_pass_the_checks_at_tail_points_and_default_sizes(rng):
    layer = gradcheck.randomize_parameters(RQSpline(3, n_bins=8), rng, 0.5)
    x = np.vstack([rng.normal(0, 2, (10, 3)), [[3.5, -4.0, 0.0]]])
    assert gradcheck.check_bijector(layer, x, rng).passed()
    coupling = SplineCoupling([1, 0, 0, 1], (16,), "tanh", n_bins=8, bound=3.0, rng=rng)
    gradcheck.randomize_parameters(coupling, rng, 0.1)
    assert gradcheck.check_bijector(coupling, rng.normal(0, 2, (12, 4)), rng).passed()


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_bins=1), "n_bins K an integer >= 2"),
    (dict(n_bins=2.5), "n_bins K an integer >= 2"),
    (dict(bound=0.0), "positive finite bound"),
    (dict(bound=np.inf), "positive finite bound"),
    (dict(n_bins=10, min_width=0.1), "min_width < 1/K"),
    (dict(n_bins=4, min_height=0.3), "min_height < 1/K"),
    (dict(min_derivative=0.0), "positive min_derivative"),
])
def test_bad_options_are_refused(kwargs, words):
    for build in (lambda: RQSpline(2, **kwargs), lambda: SplineCoupling([1, 0], **kwargs)):
        with pytest.raises(ValueError, match=words):
            build()


def test_non_finite_spline_parameters_are_refused(rng):
    layer = RQSpline(2)
    layer.params["uh"][0, 1] = np.nan
    with pytest.raises(ValueError, match="RQSpline: expected finite spline parameters"):
        layer.forward(rng.standard_normal((3, 2)))
    coupling = SplineCoupling([1, 0], (8,), rng=rng, zero_init=False)
    coupling.net.layers[-1].params["W"][0, 0] = np.inf
    with np.errstate(invalid="ignore"), \
            pytest.raises(ValueError, match="SplineCoupling: expected finite spline parameters"):
        coupling.inverse(rng.standard_normal((3, 2)))


def test_nsf_saves_loads_and_float32_matches_float64(rng, tmp_path):
    flow = gradcheck.randomize_parameters(models.nsf(2, n_layers=4, hidden=(16,), rng=rng),
                                          rng, 0.1)
    x = rng.normal(0, 2, (50, 2))
    path = io.save(flow, tmp_path / "nsf.npz")
    again = io.load(path)
    assert np.array_equal(again.log_prob(x), flow.log_prob(x))
    single = models.nsf(2, n_layers=4, hidden=(16,), rng=rng, dtype=np.float32)
    single.load_state_dict({k: v.astype(np.float32) for k, v in flow.state_dict().items()})
    lp32 = single.log_prob(x.astype(np.float32))
    assert lp32.dtype == np.float32
    assert np.abs(lp32 - flow.log_prob(x)).max() < 1e-3
