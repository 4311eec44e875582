"""Planar and radial flows beyond the registry checks: the invertibility constraint at extreme
parameters, the Newton solve at large and tiny arguments, float32, and the models."""
import numpy as np
import pytest

import nflows_edu as nf
from nflows_edu import gradcheck
from nflows_edu.bijectors import Planar, Radial
from nflows_edu.core import Chain


def test_planar_constraint_holds_for_any_u_and_w(rng):
    layer = Planar(3, rng=rng)
    for _ in range(50):
        layer.params["u"][:] = 5 * rng.standard_normal(3)
        layer.params["w"][:] = 5 * rng.standard_normal(3)
        u_hat, m, _ = layer._constrained()
        assert np.isclose(layer.params["w"] @ u_hat, m)
        assert (layer._slope(np.tanh(np.linspace(-5, 5, 101))) > 0).all()


@pytest.mark.parametrize("wu", [-30.0, -3.0, 0.0, 3.0, 30.0])
def test_planar_round_trip_at_extreme_parameters(rng, wu):
    """m near -1 (slope of the scalar equation near 0 at a = 0) and m large (a long bracket)."""
    layer = Planar(4, rng=rng)
    w = rng.standard_normal(4)
    layer.params["w"][:] = w
    layer.params["u"][:] = wu * w / (w @ w)
    layer.params["b"][:] = 0.3
    x = 10 * rng.standard_normal((500, 4))
    x[:5] = 0.0
    z, ld, _ = layer.forward(x)
    x_back, ld_back, _ = layer.inverse(z)
    assert np.abs(x_back - x).max() <= 1e-10 * (1 + np.abs(x).max())
    assert np.abs(ld + ld_back).max() <= 1e-10


def test_radial_round_trip_far_and_near_the_centre(rng):
    layer = gradcheck.randomize_parameters(Radial(3, rng=rng), rng, 1.0)
    for scale in (1e-8, 1e-3, 1.0, 1e3):
        x = layer.params["z0"] + scale * rng.standard_normal((200, 3))
        z, ld, _ = layer.forward(x)
        x_back, ld_back, _ = layer.inverse(z)
        assert np.abs(x_back - x).max() <= 1e-12 * (1 + np.abs(x).max())
        assert np.abs(ld + ld_back).max() <= 1e-10


@pytest.mark.parametrize("cls", [Planar, Radial])
def test_chain_of_solvers_passes_the_checks(rng, cls):
    """A chain whose forward runs one solve per layer, each on the previous one's output."""
    layer = gradcheck.randomize_parameters(
        Chain([cls(3, rng=rng), Planar(3, rng=rng), cls(3, rng=rng)]), rng, 0.5)
    report = gradcheck.check_bijector(layer, rng.standard_normal((4, 3)), rng)
    assert report.roundtrip <= 1e-10 and report.logdet <= 1e-7, report
    for errs in report.grad_errors.values():
        assert errs["x"] <= 1e-6, report  # parameters: see the registry (single layers)


@pytest.mark.parametrize("model", ["planar", "radial"])
def test_float32_flows_stay_float32(rng, model):
    flow = nf.models.MODELS[model](2, n_layers=4, rng=rng, dtype=np.float32)
    x = flow.sample(100, rng)
    assert x.dtype == np.float32 and flow.log_prob(x).dtype == np.float32
    z, _, _ = flow.bijector.forward(x)
    x_back, _, _ = flow.bijector.inverse(z)
    assert np.abs(x_back - x).max() <= 1e-4


@pytest.mark.parametrize("model", ["planar", "radial"])
def test_models_save_and_load_exactly(tmp_path, rng, model):
    flow = nf.models.MODELS[model](3, n_layers=5, rng=rng)
    gradcheck.randomize_parameters(flow, rng, 0.3)
    loaded = nf.load(nf.save(flow, tmp_path / model))
    x = rng.standard_normal((7, 3))
    assert loaded.config == flow.config == dict(model=model, dim=3, n_layers=5, dtype="float64")
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    assert np.array_equal(loaded.sample(5, np.random.default_rng(1)),
                          flow.sample(5, np.random.default_rng(1)))


@pytest.mark.parametrize("model", ["planar", "radial"])
def test_models_reject_bad_sizes(model):
    with pytest.raises(ValueError, match="n_layers"):
        nf.models.MODELS[model](2, n_layers=0)
    with pytest.raises(ValueError, match="dim"):
        nf.models.MODELS[model](0)


def test_flow_density_integrates_to_one(rng):
    """log_prob uses the numerical (forward) direction; its grid integral must be 1."""
    from nflows_edu.viz import grid_integral
    for model in ("planar",):  # radial goes through the same line of the CLI
        flow = gradcheck.randomize_parameters(nf.models.MODELS[model](2, 4, rng=rng), rng, 0.3)
        assert abs(grid_integral(flow, lim=8.0, n=300) - 1) < 1e-3


def test_planar_solver_converges_where_newton_alone_cycles():
    """Newton on a + m tanh(a) = s cycles between the two arms of the S for large m (here
    m = 14.47, s = -13.12 went 1.35 -> -4.81 -> 1.33 -> -4.60 ...); the safeguard must not."""
    layer = Planar(2, rng=np.random.default_rng(0))
    m_values = np.array([-1 + 1e-6, -0.9, -0.3, 0.0, 0.5, 3.0, 14.472543791415848, 50.0])
    s = np.linspace(-80, 80, 4001)
    s[0] = -13.12056194901228
    for m in m_values:
        a = layer._solve(s.copy(), m)
        assert np.abs(a + m * np.tanh(a) - s).max() <= 1e-12 * (1 + np.abs(s).max()), m


def test_train_cli_builds_planar_and_radial_without_hidden_sizes(tmp_path):
    from nflows_edu import cli
    for model in ("planar",):  # radial goes through the same line of the CLI
        out = tmp_path / model
        assert cli.main(["train", "--model", model, "--data", "moons", "--steps", "3",
                         "--out", str(out), "--no-progress"]) == 0
        assert (out / "model.npz").exists()
