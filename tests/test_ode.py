"""The ODE solvers: RK4's order of accuracy, dopri5 meeting its tolerance, the VJP of one RK4
step against central differences, and the errors."""
import numpy as np
import pytest

from nflows_edu.gradcheck import numerical_gradient, rel_error
from nflows_edu.ode import dopri5, rk4, rk4_step, rk4_step_backward


def linear_problem(rng, n=5, d=3):
    r"""The linear time-varying ODE dy/dt = (lam + cos(t)) y, elementwise, whose solution is
    y(t) = y0 exp(lam t + sin(t)) (lam (d,), one rate per feature, some growing and some
    decaying)."""
    lam = rng.uniform(-1.5, 1.0, d)
    y0 = rng.standard_normal((n, d))

    def f(t, y):
        return (lam + np.cos(t)) * y

    def exact(t):
        return y0 * np.exp(lam * t + np.sin(t))
    return f, y0, exact


def test_rk4_is_fourth_order(rng):
    f, y0, exact = linear_problem(rng)
    errors = [np.abs(rk4(f, y0, 0.0, 2.0, n)[0] - exact(2.0)).max() for n in (10, 20, 40)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(12 < r < 20 for r in ratios), (errors, ratios)  # 2^4 = 16


def test_rk4_backwards_in_time_and_states(rng):
    f, y0, exact = linear_problem(rng)
    y1, nfe, states = rk4(f, exact(1.0), 1.0, 0.0, 64, return_states=True)
    assert nfe == 4 * 64 and len(states) == 65 and states[0] is not None
    np.testing.assert_allclose(states[-1], y1)
    assert np.abs(y1 - y0).max() < 1e-6


def test_rk4_step_backward_matches_central_differences(rng):
    """The VJP of one step, through a nonlinear field with a parameter W."""
    W = rng.standard_normal((3, 3))
    dW = np.zeros_like(W)

    def f(t, y):
        return np.tanh(y @ W) * (1 + t)

    def f_cached(t, y):
        a = np.tanh(y @ W)
        return a * (1 + t), (y, a, t)

    def f_backward(dk, cache):
        y, a, t = cache
        da = dk * (1 + t) * (1 - a**2)
        dW[...] += y.T @ da
        return da @ W.T

    y = rng.standard_normal((4, 3))
    dy_next = rng.standard_normal((4, 3))
    dy = rk4_step_backward(f_cached, f_backward, 0.3, y, 0.25, dy_next)

    def loss():
        return np.sum(dy_next * rk4_step(f, 0.3, y, 0.25))
    assert rel_error(dy, numerical_gradient(loss, y)) < 1e-8
    assert rel_error(dW, numerical_gradient(loss, W)) < 1e-8


@pytest.mark.parametrize("rtol", [1e-4, 1e-7, 1e-10])
def test_dopri5_meets_its_tolerance(rtol, rng):
    f, y0, exact = linear_problem(rng)
    atol = rtol * 1e-2
    y1, nfe = dopri5(f, y0, 0.0, 2.0, rtol=rtol, atol=atol)
    err = np.abs(y1 - exact(2.0)) / (atol + rtol * np.abs(exact(2.0)))
    # the local error is controlled; the global one stays a small multiple of it
    assert err.max() < 3, err.max()  # measured 0.5 to 1.1
    assert nfe > 0


def test_dopri5_takes_fewer_evaluations_at_looser_tolerances_and_goes_backwards(rng):
    f, y0, exact = linear_problem(rng)
    _, nfe_loose = dopri5(f, y0, 0.0, 2.0, rtol=1e-4, atol=1e-6)
    _, nfe_tight = dopri5(f, y0, 0.0, 2.0, rtol=1e-10, atol=1e-12)
    assert nfe_loose < nfe_tight
    back, _ = dopri5(f, exact(2.0), 2.0, 0.0, rtol=1e-9, atol=1e-11)
    assert np.abs(back - y0).max() < 1e-6


@pytest.mark.parametrize("rtol, atol", [(0.0, 1e-8), (1e-6, -1.0), (np.nan, 1e-8)])
def test_dopri5_refuses_non_positive_tolerances(rtol, atol):
    with pytest.raises(ValueError, match="dopri5: expected positive tolerances"):
        dopri5(lambda t, y: -y, np.ones((2, 2)), 0.0, 1.0, rtol=rtol, atol=atol)


def test_dopri5_step_limit_says_what_to_change():
    with pytest.raises(ValueError, match=r"max_steps=3 at t = .*raise max_steps or loosen"):
        dopri5(lambda t, y: -50 * y, np.ones((2, 2)), 0.0, 10.0, rtol=1e-10, atol=1e-12,
               max_steps=3)


def test_non_finite_state_is_reported_with_its_time():
    """dy/dt = y^3, y(0) = 10 blows up at t = 1 / 200; dy/dt = y^2, y(0) = 1 at t = 1."""
    with pytest.raises(ValueError, match=r"rk4: non-finite .* at t = 1; reduce the step"), \
            np.errstate(over="ignore", invalid="ignore"):
        rk4(lambda t, y: y**3, np.full((2, 1), 10.0), 0.0, 2.0, 4)
    with pytest.raises(ValueError, match=r"dopri5: .*(non-finite state|max_steps)"), \
            np.errstate(over="ignore", invalid="ignore"):
        dopri5(lambda t, y: y**2, np.ones((1, 1)), 0.0, 2.0, max_steps=2000)
    with pytest.raises(ValueError, match=r"dopri5: non-finite state .* at t = 0"), \
            np.errstate(divide="ignore"):
        dopri5(lambda t, y: y / 0.0, np.ones((1, 1)), 0.0, 1.0)
    # a field that is NaN beyond t = 0.5: the steps shrink towards it, then give up there
    with pytest.raises(ValueError, match=r"dopri5: non-finite state .* at t = 0.5 that no step"):
        dopri5(lambda t, y: -y if t <= 0.5 else np.full_like(y, np.nan), np.ones((1, 1)),
               0.0, 1.0)
    with pytest.raises(ValueError, match="positive integer n_steps"):
        rk4(lambda t, y: y, np.ones((1, 1)), 0.0, 1.0, 0)
