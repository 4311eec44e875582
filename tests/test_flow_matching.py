"""Conditional flow matching: the loss's value and parameter gradient, the minibatch optimal
transport pairing, and train.fit_flow_matching (it learns, it stops on divergence)."""
import itertools
import re

import numpy as np
import pytest

from nflows_edu import datasets, flow_matching, gradcheck, io, models, train
from nflows_edu.bijectors.cnf import TimeField
from nflows_edu.flow_matching import (MarginalTarget, cfm_loss_and_grad, field_of, ot_pairing,
                                      straight_path)
from nflows_edu.gradcheck import numerical_gradient, rel_error


def pair_cost(x0, x1):
    return float(np.sum((x0 - x1)**2))


def test_loss_is_the_mean_over_examples_of_the_squared_error_summed_over_features(rng):
    field = gradcheck.randomize_parameters(TimeField(3, (8,), rng=rng), rng, 0.5)
    x0, x1, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)), rng.uniform(size=6)
    # one example at a time, with the scalar time the ODE solver uses
    errors = [np.sum((field.forward(((1 - s) * a + s * b)[None], s)[0][0] - (b - a))**2)
              for a, b, s in zip(x0, x1, t)]
    assert cfm_loss_and_grad(field, x0, x1, t) == pytest.approx(np.mean(errors), rel=1e-12)


def test_straight_path_runs_from_data_to_noise(rng):
    x0, x1 = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    np.testing.assert_array_equal(straight_path(x0, x1, np.zeros(4))[0], x0)
    np.testing.assert_allclose(straight_path(x0, x1, np.ones(4))[0], x1, rtol=0, atol=1e-15)
    eps = 1e-6
    t = rng.uniform(0.1, 0.9, 4)
    xt, u = straight_path(x0, x1, t)
    velocity = (straight_path(x0, x1, t + eps)[0] - straight_path(x0, x1, t - eps)[0]) / (2 * eps)
    np.testing.assert_allclose(u, velocity, rtol=0, atol=1e-8)


def test_loss_parameter_gradient_matches_central_differences(rng):
    field = gradcheck.randomize_parameters(TimeField(2, (8, 8), rng=rng), rng, 0.5)
    x0, x1, t = rng.standard_normal((7, 2)), rng.standard_normal((7, 2)), rng.uniform(size=7)
    field.zero_grad()
    cfm_loss_and_grad(field, x0, x1, t)
    analytic = [g.copy() for _, _, g in field.parameters()]

    def loss():
        return cfm_loss_and_grad(field, x0, x1, t)  # its gradients are not read again
    for (name, p, _), g in zip(field.parameters(), analytic):
        assert rel_error(g, numerical_gradient(loss, p)) < 1e-6, name


def test_loss_adds_its_gradient_to_the_existing_one(rng):
    field = TimeField(2, (8,), rng=rng)
    x0, x1, t = rng.standard_normal((5, 2)), rng.standard_normal((5, 2)), rng.uniform(size=5)
    field.zero_grad()
    cfm_loss_and_grad(field, x0, x1, t)
    once = [g.copy() for _, _, g in field.parameters()]
    cfm_loss_and_grad(field, x0, x1, t)
    for a, (_, _, g) in zip(once, field.parameters()):
        np.testing.assert_allclose(g, 2 * a, rtol=1e-12, atol=0)


def test_ot_pairing_is_the_brute_force_minimum_on_a_tiny_batch(rng):
    x0, x1 = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    paired = ot_pairing(x0, x1)
    # the same noise points, re-ordered
    np.testing.assert_array_equal(np.sort(paired, axis=0), np.sort(x1, axis=0))
    best = min(pair_cost(x0, x1[list(p)]) for p in itertools.permutations(range(5)))
    assert pair_cost(x0, paired) == pytest.approx(best, rel=1e-12)
    assert pair_cost(x0, paired) <= pair_cost(x0, x1)


def test_ot_pairing_is_monotone_in_one_dimension(rng):
    # for the squared cost on the line the optimal coupling pairs the sorted points
    x0, x1 = rng.standard_normal((40, 1)), rng.standard_normal((40, 1))
    paired = ot_pairing(x0, x1)
    np.testing.assert_array_equal(np.argsort(paired[:, 0]), np.argsort(x0[:, 0]))
    assert pair_cost(x0, paired) < pair_cost(x0, x1)


def test_ot_pairing_makes_the_regression_easier_on_a_toy(rng):
    # the same field, data and draws: straighter, non-crossing paths leave less to average
    data = datasets.toy("8gaussians", 1000, rng)
    losses = {}
    for ot in (False, True):
        flow = models.flow_matching(2, hidden=(16, 16), rng=np.random.default_rng(0))
        history = train.fit_flow_matching(flow, data, steps=60, batch_size=128, lr=3e-3,
                                          rng=np.random.default_rng(1), ot=ot, progress=False)
        losses[ot] = np.mean(history["loss"][-20:])
    assert losses[True] < 0.5 * losses[False]


def test_fit_flow_matching_decreases_the_loss_on_8gaussians(rng):
    flow = models.flow_matching(2, hidden=(16, 16), rng=rng)
    data = datasets.toy("8gaussians", 2000, rng)
    history = train.fit_flow_matching(flow, data, steps=150, batch_size=128, lr=3e-3, rng=rng,
                                      eval_every=50, progress=False)
    assert len(history["loss"]) == 150 and history["step"] == [50, 100, 150]
    assert np.mean(history["loss"][-20:]) < 0.9 * np.mean(history["loss"][:20])
    assert np.isfinite(flow.log_prob(data[:100])).all()


@pytest.mark.parametrize("cause", ["huge lr", "NaN at step 6"])
def test_a_diverging_run_stops_and_puts_back_the_last_good_parameters(cause, rng, monkeypatch):
    data = datasets.toy("8gaussians", 500, rng)
    settings = dict(batch_size=64, lr=1e200 if cause == "huge lr" else 1e-2,
                    schedule="constant", progress=False)
    flow = models.flow_matching(2, hidden=(8,), rng=np.random.default_rng(0))
    if cause == "NaN at step 6":
        calls, real = [], flow_matching.cfm_loss_and_grad

        def sixth_is_nan(*args):
            calls.append(1)
            return float("nan") if len(calls) == 6 else real(*args)
        monkeypatch.setattr(flow_matching, "cfm_loss_and_grad", sixth_is_nan)
    with pytest.raises(train.NonFiniteLossError, match="fit_flow_matching: training diverged") \
            as caught:
        train.fit_flow_matching(flow, data, steps=50, rng=np.random.default_rng(1), **settings)
    assert all(np.isfinite(p).all() for _, p, _ in flow.parameters())
    # Step k (1-based) evaluates the loss at the parameters of k - 1 updates. Diverging at
    # step k, the update of step k - 1 is the one to undo: the parameters kept are those of
    # k - 2 updates, the last whose loss (step k - 1's) was acceptable.
    failed = int(re.search(r"diverged at step (\d+)", str(caught.value)).group(1))
    assert failed >= 2  # the initial loss is finite
    if cause == "NaN at step 6":
        assert failed == 6
    monkeypatch.undo()
    reference = models.flow_matching(2, hidden=(8,), rng=np.random.default_rng(0))
    if failed > 2:
        train.fit_flow_matching(reference, data, steps=failed - 2, rng=np.random.default_rng(1),
                                **settings)
    for (name, p, _), (_, q, _) in zip(flow.parameters(), reference.parameters()):
        np.testing.assert_array_equal(p, q, err_msg=name)


def test_the_trained_flow_saves_and_loads(rng, tmp_path):
    flow = models.flow_matching(2, hidden=(8,), n_steps=4, rng=rng)
    train.fit_flow_matching(flow, datasets.toy("8gaussians", 300, rng), steps=5, rng=rng,
                            progress=False)
    io.save(flow, tmp_path / "fm.npz")
    loaded = io.load(tmp_path / "fm.npz")
    assert loaded.config["model"] == "flow_matching"
    x = rng.standard_normal((10, 2))
    np.testing.assert_array_equal(loaded.log_prob(x), flow.log_prob(x))


def test_field_of_accepts_a_single_cnf_and_refuses_the_rest(rng):
    one = models.ffjord(2, hidden=(8,), rng=rng)
    assert field_of(one) is one.bijector.layers[0].field
    assert field_of(one.bijector.layers[0]) is one.bijector.layers[0].field
    with pytest.raises(ValueError, match="fit_flow_matching: .*exactly one CNF"):
        train.fit_flow_matching(models.ffjord(2, hidden=(8,), n_blocks=2, rng=rng),
                                rng.standard_normal((10, 2)), steps=1, progress=False)
    with pytest.raises(ValueError, match="exactly one CNF"):
        field_of(models.realnvp(2, n_layers=2, hidden=(8,), rng=rng))
    with pytest.raises(ValueError, match="expected a TimeField"):
        field_of(np.zeros(3))


@pytest.mark.parametrize("kwargs, words", [
    (dict(lr=float("nan")), "fit_flow_matching: .*lr"), (dict(steps=0), "steps"),
    (dict(batch_size=0), "batch_size"), (dict(clip=-1), "clip"),
])
def test_fit_flow_matching_refuses_bad_arguments(kwargs, words, rng):
    flow = models.flow_matching(2, hidden=(8,), rng=rng)
    before = [p.copy() for _, p, _ in flow.parameters()]
    with pytest.raises(ValueError, match=words):
        train.fit_flow_matching(flow, rng.standard_normal((20, 2)), progress=False,
                                **{"steps": 3, **kwargs})
    assert all(np.array_equal(a, p) for a, (_, p, _) in zip(before, flow.parameters()))


def test_loss_and_pairing_refuse_mismatched_input(rng):
    field = TimeField(2, (8,), rng=rng)
    x = rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match="cfm_loss_and_grad: .*shape"):
        cfm_loss_and_grad(field, x, x[:3], np.full(4, 0.5))
    with pytest.raises(ValueError, match="cfm_loss_and_grad: .*shape"):
        cfm_loss_and_grad(field, x, x, 0.5)
    with pytest.raises(ValueError, match=r"cfm_loss_and_grad: expected times t in \[0, 1\]"):
        cfm_loss_and_grad(field, x, x, np.full(4, 1.5))
    with pytest.raises(ValueError, match="ot_pairing: .*same shape"):
        ot_pairing(x, x[:3])
    with pytest.raises(ValueError, match="TimeField: expected a finite time"):
        field.forward(x, np.zeros(3))


# ------------------------------------------------------------------ the marginal target
def _brute_force_field(xt, t, data):
    """(x - E[x_0 | x_t = x]) / t over every data point, one example at a time: the posterior
    p_j proportional to the Gaussian likelihood N(x; (1 - t) y_j, t^2 I)."""
    out = np.empty_like(xt)
    for n in range(len(xt)):
        log_lik = -np.sum((xt[n] - (1 - t[n]) * data) ** 2, axis=1) / (2 * t[n] ** 2)
        p = np.exp(log_lik - log_lik.max())
        out[n] = (xt[n] - p @ data / p.sum()) / t[n]
    return out


def test_marginal_target_is_the_posterior_average_over_the_data(rng):
    data = datasets.toy("8gaussians", 300, rng)
    x0, x1 = data[:64], rng.standard_normal((64, 2))
    t = rng.uniform(0.01, 0.99, size=64)
    xt, _ = straight_path(x0, x1, t)
    exact = _brute_force_field(xt, t, data)
    # the shared-reference path with the whole data set as reference
    np.testing.assert_allclose(MarginalTarget._field(xt, t, data), exact, rtol=1e-9, atol=1e-9)
    # the nearest-neighbour path with every point a neighbour, at every t
    target = MarginalTarget(data, rng, k=len(data), t_knn=1.0)
    np.testing.assert_allclose(target(x0, x1, t), exact, rtol=1e-9, atol=1e-9)


def test_marginal_target_of_one_point_is_its_straight_line(rng):
    y = rng.standard_normal((1, 3))
    x0, x1 = np.repeat(y, 5, axis=0), rng.standard_normal((5, 3))
    t = np.array([0.0, 1e-6, 0.05, 0.5, 0.9])
    u = MarginalTarget(y, rng)(x0, x1, t)
    # float64 for t < t_knn (to round-off even at t = 1e-6), float32 above
    np.testing.assert_allclose(u[:3], (x1 - x0)[:3], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(u[3:], (x1 - x0)[3:], rtol=1e-5, atol=1e-5)


def test_marginal_target_estimates_agree_with_the_whole_sum(rng):
    # the k nearest points for small t and a reference batch for large t: each within a small
    # error of the sum over all 20,000 points, where the conditional target is far off
    data = datasets.toy("checkerboard", 20000, rng)
    target = MarginalTarget(data, rng)
    for t_value in (0.02, 0.1, 0.3, 0.8):
        x0, x1 = data[:200], rng.standard_normal((200, 2))
        t = np.full(200, t_value)
        xt, u = straight_path(x0, x1, t)
        exact = MarginalTarget._field(xt, t, data)
        err = np.mean(np.sum((target(x0, x1, t) - exact) ** 2, axis=1))
        noise = np.mean(np.sum((u - exact) ** 2, axis=1))
        assert err < 0.1 * noise and err < 0.2, (t_value, err, noise)


def test_the_marginal_target_makes_the_regression_far_less_noisy(rng):
    data = datasets.toy("8gaussians", 2000, rng)
    losses = {}
    for target in ("conditional", "marginal"):
        flow = models.flow_matching(2, hidden=(16, 16), rng=np.random.default_rng(0))
        history = train.fit_flow_matching(flow, data, steps=60, batch_size=128, lr=3e-3,
                                          rng=np.random.default_rng(1), target=target,
                                          progress=False)
        losses[target] = np.mean(history["loss"][-20:])
    assert losses["marginal"] < 0.3 * losses["conditional"], losses
    with pytest.raises(ValueError, match="target 'conditional' or 'marginal'"):
        train.fit_flow_matching(flow, data, steps=1, target="exact", progress=False)
    with pytest.raises(ValueError, match="cannot be combined with ot=True"):
        train.fit_flow_matching(flow, data, steps=1, target="marginal", ot=True, progress=False)
