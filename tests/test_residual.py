"""Residual and implicit flows: the Lipschitz networks, the Lipschitz bound, the stochastic
log-determinants' unbiasedness, non-convergence, the models, save/load and the CLI."""
import json

import numpy as np
import pytest

import nflows_edu as nf
from nflows_edu import cli, gradcheck, models
from nflows_edu.bijectors import ConvergenceError, ImplicitBlock, ResidualBlock
from nflows_edu.bijectors.residual import _randomize_lipschitz
from nflows_edu.nn import LipschitzMLP, LipSwish, Sine, SpectralLinear


def _lipschitz_modules(rng):
    n_in, n_out = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    c = float(rng.uniform(0.3, 0.95))
    act = ["lipswish", "sine"][int(rng.integers(2))]
    return {
        "SpectralLinear": (SpectralLinear(n_in, n_out, c, rng), n_in),
        "LipSwish": (LipSwish(), n_in),
        "Sine": (Sine(), n_in),
        "LipschitzMLP": (LipschitzMLP((n_in, 7, 5, n_out), c, act, rng), n_in),
    }


@pytest.mark.parametrize("draw", range(10))
@pytest.mark.parametrize("name", ["SpectralLinear", "LipSwish", "Sine", "LipschitzMLP"])
def test_lipschitz_module_backward_matches_central_differences(name, draw):
    rng = np.random.default_rng(draw)
    module, n_in = _lipschitz_modules(rng)[name]
    # scale 1: the weights end up with sigma > c, so W_hat = W / s with s > 1 is checked;
    # u, v are not updated by forward or backward, so central differences see one function
    gradcheck.randomize_parameters(module, rng, 1.0)
    x = rng.standard_normal((int(rng.integers(1, 6)), n_in))
    errors = gradcheck.check_module(module, x, rng)
    assert set(errors) == {"x"} | {n for n, _, _ in module.parameters()}
    assert max(errors.values()) <= 1e-6, errors


def test_spectral_path_is_exercised(rng):
    layer = gradcheck.randomize_parameters(SpectralLinear(4, 3, 0.5, rng), rng, 1.0)
    layer.update(200)
    W_hat, s, _, _ = layer.weight()
    assert s > 1
    # power iteration converged: the normalised weight has spectral norm c
    assert abs(np.linalg.norm(W_hat, 2) - 0.5) < 1e-10


@pytest.mark.parametrize("act", [LipSwish(), Sine()])
def test_activation_derivatives(act, rng):
    if act.params:
        act.params["rho"][:] = rng.normal()
    x = rng.uniform(-4, 4, 50)
    y, d1, d2 = act.derivatives(x)
    eps = 1e-6
    np.testing.assert_allclose(d1, (act.derivatives(x + eps)[0] - act.derivatives(x - eps)[0])
                               / (2 * eps), atol=1e-8)
    np.testing.assert_allclose(d2, (act.derivatives(x + eps)[1] - act.derivatives(x - eps)[1])
                               / (2 * eps), atol=1e-7)
    assert np.abs(d1).max() <= 1 + 1e-12  # 1-Lipschitz
    dense = np.linspace(-20, 20, 200001)
    assert np.abs(act.derivatives(dense)[1]).max() <= 1 + 1e-12


def test_jvp_forward_and_backward(rng):
    g = _randomize_lipschitz(1.5)(ResidualBlock(3, (7, 5), c=0.6, rng=rng), rng, 0.5).g
    x = rng.standard_normal((4, 3))
    V = rng.standard_normal((4, 2, 3))
    y, G, caches = g.jvp_forward(x, V)
    J = gradcheck.numerical_jacobian(g.value, x)        # J[n, j, i] = dg_j / dx_i
    np.testing.assert_allclose(G, np.einsum("nri,nji->nrj", V, J), atol=1e-8)
    dg, dG = rng.standard_normal(y.shape), rng.standard_normal(G.shape)
    g.zero_grad()
    dx = g.jvp_backward(dg, dG, caches)
    analytic = {n: gr.copy() for n, _, gr in g.parameters()}
    xw = x.copy()

    def loss():
        value, tangent, _ = g.jvp_forward(xw, V)
        return np.sum(dg * value) + np.sum(dG * tangent)

    assert gradcheck.rel_error(dx, gradcheck.numerical_gradient(loss, xw)) < 1e-7
    for name, p, _ in g.parameters():
        assert gradcheck.rel_error(analytic[name], gradcheck.numerical_gradient(loss, p)) < 1e-7


POWER_ITERATION_TOL = 1e-8  # |u^T W v - ||W||_2| / ||W||_2 after 200 steps, on these sizes


@pytest.mark.parametrize("sigma_over_c", [0.8, 3.0])
def test_lipschitz_bound_of_g(sigma_over_c, rng):
    """The largest singular value of the numerical Jacobian of g is <= c at random points."""
    for _ in range(5):
        c = float(rng.uniform(0.5, 0.95))
        block = ResidualBlock(3, (16, 16), c=c, rng=rng)
        gradcheck.randomize_parameters(block, rng, 1.0)
        for lin in block.g.linears:
            lin.params["W"] *= sigma_over_c * c / np.linalg.norm(lin.params["W"], 2)
        block.g.update(200)
        x = 3 * rng.standard_normal((20, 3))
        J = gradcheck.numerical_jacobian(block.g.value, x)
        assert np.linalg.norm(J, 2, axis=(1, 2)).max() <= c * (1 + POWER_ITERATION_TOL) + 1e-8


def _exact_and_draws(mode, n_draws, seed, n_terms=4):
    r"""A small block, the exact  L = sum_n dlogdet_n logdet_n  and its gradient projected on a
    random direction (parameters and x), and ``n_draws`` estimates of both in ``mode``."""
    rng = np.random.default_rng(seed)
    block = _randomize_lipschitz(1.5)(ResidualBlock(3, (8,), c=0.8, n_terms=n_terms, rng=rng,
                                                    power_iterations=0), rng, 0.5)
    x = rng.standard_normal((2, 3))
    dlogdet = np.array([1.0, -0.5])
    direction = {name: rng.standard_normal(p.shape) for name, p, _ in block.parameters()}
    direction_x = rng.standard_normal(x.shape)

    def gradient_projection(dx):
        return float(sum(np.sum(g * direction[n]) for n, _, g in block.parameters())
                     + np.sum(dx * direction_x))

    def along(t, value):
        """value() at parameters + t * direction, x + t * direction_x."""
        for name, p, _ in block.parameters():
            p += t * direction[name]
        try:
            return value(x + t * direction_x)
        finally:
            for name, p, _ in block.parameters():
                p -= t * direction[name]

    block.zero_grad()
    _, ld, cache = block.forward(x)
    exact_value = float(np.sum(dlogdet * ld))
    exact_grad = gradient_projection(block.backward(np.zeros_like(x), dlogdet, cache))
    block.logdet_mode = mode
    values, grads = [], []
    for _ in range(n_draws):
        block.zero_grad()
        _, ld, cache = block.forward(x)
        values.append(float(np.sum(dlogdet * ld)))
        grads.append(gradient_projection(block.backward(np.zeros_like(x), dlogdet, cache)))
    return dict(block=block, dlogdet=dlogdet, along=along, exact_value=exact_value,
                exact_grad=exact_grad, values=np.array(values), grads=np.array(grads))


def _within_3_standard_errors(draws, target):
    se = draws.std(ddof=1) / np.sqrt(draws.size)
    return abs(draws.mean() - target) <= 3 * se, (draws.mean(), target, se)


def test_roulette_logdet_and_neumann_gradient_are_unbiased():
    r = _exact_and_draws("roulette", 3000, 1)
    ok, info = _within_3_standard_errors(r["values"], r["exact_value"])
    assert ok, info
    ok, info = _within_3_standard_errors(r["grads"], r["exact_grad"])
    assert ok, info
    assert r["values"].std() > 0 and r["grads"].std() > 0  # estimates, not the exact values


def test_series_is_unbiased_for_the_truncated_series():
    """i-ResNet's truncated series (Hutchinson) is unbiased for the truncated series
    sum_{k<=n} (-1)^(k+1) tr(J^k)/k, not for the log-det; its (truncated Neumann) gradient
    estimator is unbiased for the derivative of that truncated series."""
    n_terms = 2
    r = _exact_and_draws("series", 3000, 2, n_terms)
    block, dlogdet = r["block"], r["dlogdet"]

    def truncated(x):
        eye = np.broadcast_to(np.eye(3), (x.shape[0], 3, 3))
        G = block.g.jvp_forward(x, eye)[1]
        P, total = eye, 0.0
        for k in range(1, n_terms + 1):
            P = P @ G
            total = total + (-1) ** (k + 1) * np.trace(P, axis1=1, axis2=2) / k
        return float(np.sum(dlogdet * total))

    ok, info = _within_3_standard_errors(r["values"], r["along"](0.0, truncated))
    assert ok, info
    eps = 1e-6
    slope = (r["along"](eps, truncated) - r["along"](-eps, truncated)) / (2 * eps)
    ok, info = _within_3_standard_errors(r["grads"], slope)
    assert ok, info
    assert abs(r["along"](0.0, truncated) - r["exact_value"]) > 1e-6  # the truncation bias


def test_non_convergence_raises_a_value_error(rng):
    block = _randomize_lipschitz(0.9)(ResidualBlock(2, (8,), c=0.95, max_iter=2, rng=rng),
                                       rng, 0.5)
    z = rng.standard_normal((3, 2))
    with pytest.raises(ConvergenceError, match="max_iter") as info:
        block.inverse(z)
    assert isinstance(info.value, ValueError)
    block.max_iter = 2000
    x, _, cache = block.inverse(z)
    assert cache["iterations"] == len(cache["steps"]) > 2
    assert np.isfinite(x).all()


@pytest.mark.parametrize("c", [0.0, 1.0, 1.5, -0.2, float("nan")])
def test_lipschitz_bound_outside_0_1_is_rejected(c):
    for build in (lambda: ResidualBlock(2, c=c), lambda: ImplicitBlock(2, c=c),
                  lambda: models.iresnet(2, c=c), lambda: models.resflow(2, c=c),
                  lambda: models.impflow(2, c=c)):
        with pytest.raises(ValueError, match="0 < c < 1"):
            build()


@pytest.mark.parametrize("name", ["iresnet", "resflow", "impflow"])
def test_models_save_load_with_power_iteration_buffers(name, rng, tmp_path):
    flow = models.MODELS[name](2, n_layers=2, hidden=(8,), rng=rng)
    data = rng.standard_normal((64, 2))
    nf.train.fit(flow, data, steps=3, batch_size=32, rng=rng, progress=False)
    buffers = dict(flow.named_buffers())
    assert any(k.endswith(".u") for k in buffers)
    loaded = nf.load(nf.save(flow, tmp_path / name))
    for k, b in loaded.named_buffers():
        np.testing.assert_array_equal(b, buffers[k])
    x = rng.standard_normal((10, 2))
    models.set_logdet(flow, "exact")
    models.set_logdet(loaded, "exact")
    np.testing.assert_array_equal(loaded.log_prob(x), flow.log_prob(x))
    np.testing.assert_array_equal(loaded.sample(5, np.random.default_rng(3)),
                                  flow.sample(5, np.random.default_rng(3)))
    assert loaded.config == flow.config and loaded.config["n_blocks"] == 2


def test_training_updates_the_power_iteration(rng):
    flow = models.resflow(2, n_blocks=1, hidden=(8,), rng=rng)
    u = flow.bijector.layers[0].g.linears[0].buffers["u"]
    before = u.copy()
    flow.bijector.layers[0].g.linears[0].params["W"] += 0.3 * rng.standard_normal((2, 8))
    flow.loss_and_grad(rng.standard_normal((16, 2)))
    assert not np.array_equal(u, before)


def test_cli_trains_residual_and_implicit_models(tmp_path, capsys):
    for name in ("resflow", "impflow"):
        out = tmp_path / name
        args = ["train", "--model", name, "--data", "checkerboard", "--steps", "2",
                "--n-layers", "1", "--hidden", "8", "--out", str(out), "--no-progress"]
        assert cli.main(args) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["model"] == name and np.isfinite(metrics["kl"])
        assert nf.load(out / "model.npz").config["model"] == name


@pytest.mark.parametrize("name", ["iresnet", "resflow", "impflow"])
def test_models_in_float32(name, rng):
    flow = models.MODELS[name](2, n_blocks=2, hidden=(8,), dtype=np.float32, rng=rng)
    x = rng.standard_normal((16, 2))
    assert flow.log_prob(x).dtype == np.float32 and np.isfinite(flow.log_prob(x)).all()
    assert flow.sample(8, rng).dtype == np.float32
    assert np.isfinite(flow.loss_and_grad(x))


def test_non_finite_input_is_rejected_by_both_directions(rng):
    block = ResidualBlock(2, (8,), rng=rng)
    with pytest.raises(ValueError, match="finite"):
        block.inverse(np.array([[np.inf, 0.0]]))
    with pytest.raises(ValueError, match="finite"):
        ImplicitBlock(2, (8,), rng=rng).forward(np.array([[np.nan, 0.0]]))
