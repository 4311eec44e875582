"""The energies U1-U4 (gradients against central differences, log Z on grids) and reverse-KL
training (its gradient against central differences, its guard)."""
import numpy as np
import pytest

import nflows_edu as nf
from nflows_edu import datasets, gradcheck, train


@pytest.mark.parametrize("name", datasets.ENERGY_NAMES)
def test_energy_gradient_matches_central_differences(rng, name):
    x = rng.uniform(-5, 5, (40, 2))  # beyond the wall at |x1| = 4 too
    numeric = gradcheck.numerical_jacobian(lambda v: datasets.energy(name, v)[:, None], x)
    assert gradcheck.rel_error(datasets.energy_grad(name, x), numeric[:, 0, :]) <= 1e-8


def test_energies_match_the_paper_formulas(rng):
    x = rng.uniform(-3.9, 3.9, (50, 2))  # inside the box: no wall
    x1, x2 = x[:, 0], x[:, 1]
    w1 = np.sin(2 * np.pi * x1 / 4)
    w2 = 3 * np.exp(-0.5 * ((x1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(x1 - 1) / 0.3))
    g = lambda e, s: np.exp(-0.5 * (e / s) ** 2)  # noqa: E731
    expected = {
        "U1": 0.5 * ((np.hypot(x1, x2) - 2) / 0.4) ** 2 - np.log(g(x1 - 2, 0.6) + g(x1 + 2, 0.6)),
        "U2": 0.5 * ((x2 - w1) / 0.4) ** 2,
        "U3": -np.log(g(x2 - w1, 0.35) + g(x2 - w1 + w2, 0.35)),
        "U4": -np.log(g(x2 - w1, 0.4) + g(x2 - w1 + w3, 0.35)),
    }
    for name, u in expected.items():
        np.testing.assert_allclose(datasets.energy(name, x), u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", datasets.ENERGY_NAMES)
def test_log_z_is_converged_on_its_grid(name):
    default = datasets.energy_log_z(name)
    assert abs(datasets.energy_log_z(name, n=2000) - default) <= 1e-12  # wall on a cell edge
    assert abs(datasets.energy_log_z(name, n=1600, lim=9.0) - default) <= 1e-7  # wall inside


def test_u2_log_z_against_the_closed_form():
    # exp(-U2) integrates to 0.4 sqrt(2 pi) per unit of x1; the box has length 8 and the two
    # half-Gaussian walls add 2 * 0.2 sqrt(pi / 2)
    expected = np.log(0.4 * np.sqrt(2 * np.pi) * (8 + 2 * 0.2 * np.sqrt(np.pi / 2)))
    assert abs(datasets.energy_log_z("U2") - expected) <= 1e-9


def test_energy_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        datasets.energy("U1", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        datasets.energy_grad("U2", [[np.nan, 0.0]])
    with pytest.raises(ValueError, match="U1"):
        datasets.energy("U5", np.zeros((3, 2)))


@pytest.mark.parametrize("model", ["planar", "radial", "iaf"])
def test_reverse_kl_gradient_matches_central_differences(rng, model):
    kwargs = dict(hidden=(6,), activation="tanh") if model == "iaf" else {}
    flow = nf.models.MODELS[model](2, 3, rng=rng, **kwargs)
    gradcheck.randomize_parameters(flow, rng, 0.3)
    log_target, grad_log_target = datasets.energy_target("U3")
    z = rng.standard_normal((6, 2))
    train.reverse_kl_loss_and_grad(flow, z, log_target, grad_log_target, beta=0.7)
    analytic = {name: g.copy() for name, _, g in flow.parameters()}
    for name, p, _ in flow.parameters():
        numeric = gradcheck.numerical_gradient(
            lambda: train.reverse_kl_loss_and_grad(flow, z, log_target, grad_log_target, 0.7), p)
        assert gradcheck.rel_error(analytic[name], numeric) <= 1e-6, name


def test_fit_reverse_kl_lowers_the_kl(rng):
    flow = nf.models.planar(2, n_layers=4, rng=rng)
    log_target, grad_log_target = datasets.energy_target("U1")
    log_z = datasets.energy_log_z("U1")
    before, _ = train.reverse_kl(flow, log_target, log_z, n=5000, rng=rng)
    history = train.fit_reverse_kl(flow, log_target, grad_log_target, steps=300, lr=1e-2,
                                   rng=rng, progress=False, eval_every=100)
    after, se = train.reverse_kl(flow, log_target, log_z, n=5000, rng=rng)
    assert after >= -5 * se  # a KL is non-negative
    assert after < 0.5 * before
    assert history["step"] == [100, 200, 300] and len(history["loss"]) == 300


def test_fit_reverse_kl_anneals_beta(rng):
    flow = nf.models.radial(2, n_layers=2, rng=rng)
    history = train.fit_reverse_kl(flow, *datasets.energy_target("U2"), steps=20, rng=rng,
                                   anneal_steps=10, beta0=0.1, progress=False, eval_every=10)
    assert history["beta"][0] == 0.1 and history["beta"][-1] == 1.0
    assert np.isnan(history["kl_minus_log_z"][0]) and np.isfinite(history["kl_minus_log_z"][1])


def test_fit_reverse_kl_guard_restores_parameters(rng):
    flow = nf.models.planar(2, n_layers=2, rng=rng)
    calls = {"n": 0}

    def log_target(x):
        calls["n"] += 1
        return np.full(len(x), np.nan if calls["n"] > 3 else 0.0)

    before = None
    with pytest.raises(train.NonFiniteLossError, match="put back"):
        def grad(x):
            nonlocal before
            if calls["n"] == 3:
                before = flow.state_dict()
            return np.zeros_like(x)
        train.fit_reverse_kl(flow, log_target, grad, steps=10, rng=rng, progress=False)
    after = flow.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_fit_reverse_kl_rejects_a_trainable_base(rng):
    from nflows_edu.core import Chain, Flow
    from nflows_edu.bijectors import Planar
    from nflows_edu.distributions import DiagonalGaussian
    flow = Flow(Chain([Planar(2, rng=rng)]), DiagonalGaussian(2))
    with pytest.raises(ValueError, match="base"):
        train.fit_reverse_kl(flow, *datasets.energy_target("U1"), steps=1, progress=False)
