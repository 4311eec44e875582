"""Flows end to end: log_prob and sample, the NLL gradient, models, training, save/load."""
import json
import os

import numpy as np
import pytest

import nflows_edu as nf
from nflows_edu import datasets, gradcheck, models, train, viz


@pytest.mark.parametrize("build", [models.nice, models.realnvp])
def test_untrained_density_integrates_to_one(build, rng):
    flow = gradcheck.randomize_parameters(build(2, rng=rng), rng, 0.05)
    # NICE's logistic prior has heavy tails: integrate further out
    assert abs(viz.grid_integral(flow, lim=20.0, n=801) - 1) < 1e-2


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    data = datasets.toy("8gaussians", 20000, rng)
    flow = models.realnvp(2, n_layers=4, hidden=(32, 32), rng=rng)
    history = train.fit(flow, data, steps=400, batch_size=256, lr=3e-3, rng=rng,
                        progress=False, eval_every=100)
    return flow, history


def test_training_lowers_the_nll_and_density_integrates_to_one(trained):
    flow, history = trained
    assert history["train_nll"][-1] < history["train_nll"][0] - 0.5
    assert abs(viz.grid_integral(flow, lim=6.0, n=301) - 1) < 1e-2


def test_loss_and_grad_matches_central_differences(rng):
    flow = gradcheck.randomize_parameters(models.realnvp(2, n_layers=2, hidden=(6,),
                                                         activation="tanh", rng=rng), rng, 0.3)
    x = rng.standard_normal((5, 2)) * 2
    loss = flow.loss_and_grad(x)
    np.testing.assert_allclose(loss, -flow.log_prob(x).mean(), rtol=1e-14)
    for name, p, g in flow.parameters():
        analytic = g.copy()
        numeric = gradcheck.numerical_gradient(lambda: -flow.log_prob(x).mean(), p)
        assert gradcheck.rel_error(analytic, numeric) < 1e-6, name


def test_loss_and_grad_with_a_learnable_base(rng):
    from nflows_edu.bijectors import AffineCoupling
    from nflows_edu.distributions import DiagonalGaussian
    flow = nf.Flow(nf.Chain([AffineCoupling([1, 0], (4,), "tanh", rng=rng)]), DiagonalGaussian(2))
    gradcheck.randomize_parameters(flow, rng, 0.3)
    x = rng.standard_normal((4, 2))
    flow.loss_and_grad(x)
    names = [n for n, _, _ in flow.parameters()]
    assert "base.mu" in names and "base.log_sigma" in names
    for name, p, g in flow.parameters():
        numeric = gradcheck.numerical_gradient(lambda: -flow.log_prob(x).mean(), p)
        assert gradcheck.rel_error(g, numeric) < 1e-6, name


def test_float32_flow_matches_float64(rng):
    f64 = gradcheck.randomize_parameters(models.realnvp(3, n_layers=4, rng=rng), rng, 0.1)
    f32 = models.realnvp(3, n_layers=4, dtype=np.float32, rng=rng)
    f32.load_state_dict(f64.state_dict())
    x = rng.standard_normal((64, 3))
    l64, l32 = f64.loss_and_grad(x), f32.loss_and_grad(x)
    assert f32.log_prob(x).dtype == np.float32 and f32.sample(3, rng).dtype == np.float32
    assert abs(l32 - l64) < 1e-4 * abs(l64)
    for (n, _, g64), (_, _, g32) in zip(f64.parameters(), f32.parameters()):
        assert g32.dtype == np.float32
        assert gradcheck.rel_error(g32, g64) < 1e-3, n


def test_sample_shapes_and_reproducibility(trained):
    flow, _ = trained
    a = flow.sample(7, np.random.default_rng(1))
    b = flow.sample(7, np.random.default_rng(1))
    assert a.shape == (7, 2)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="positive whole number"):
        flow.sample(0)


@pytest.mark.parametrize("bad, words", [
    (np.zeros(2), r"\(N, 2\)"),
    (np.zeros((3, 3)), r"\(N, 2\)"),
    (np.zeros((0, 2)), "non-empty"),
    (np.array([[0.0, np.inf]]), "finite"),
])
def test_flow_rejects_bad_input(trained, bad, words):
    flow, _ = trained
    for method in (flow.log_prob, flow.loss_and_grad):
        with pytest.raises(ValueError, match=words):
            method(bad)
    with pytest.raises(ValueError, match=words):
        train.fit(flow, bad, steps=1, progress=False)


def test_models_reject_bad_arguments():
    with pytest.raises(ValueError, match="dim >= 2"):
        models.realnvp(1)
    with pytest.raises(ValueError, match="activation"):
        models.nice(2, activation="swish")


def test_save_load_reproduces_outputs_exactly(trained, tmp_path):
    flow, _ = trained
    path = nf.save(flow, tmp_path / "m.npz")
    loaded = nf.load(path)
    x = datasets.toy("8gaussians", 100, np.random.default_rng(5))
    np.testing.assert_array_equal(loaded.log_prob(x), flow.log_prob(x))
    np.testing.assert_array_equal(loaded.sample(50, np.random.default_rng(9)),
                                  flow.sample(50, np.random.default_rng(9)))
    with np.load(path, allow_pickle=False) as f:
        assert json.loads(str(f["__config__"]))["model"] == "realnvp"


@pytest.mark.parametrize("build", [models.nice, models.realnvp])
def test_save_load_float32(build, rng, tmp_path):
    flow = gradcheck.randomize_parameters(build(3, dtype=np.float32, rng=rng), rng, 0.1)
    loaded = nf.load(nf.save(flow, tmp_path / "f32"))
    x = rng.standard_normal((10, 3))
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded.log_prob(x), flow.log_prob(x))


def test_a_nice_model_saved_before_scaling_s_became_log_s_still_loads(rng, tmp_path):
    """Scaling's parameter was "s" until it took the name the other log-scales have,
    "log_s"; a model file written before (key "bijector.layers.2.s") loads, to the same
    flow, and the renaming touches no other key."""
    flow = gradcheck.randomize_parameters(models.nice(2, n_layers=2, hidden=(8,), rng=rng),
                                          rng, 0.3)
    state = flow.state_dict()
    state["bijector.layers.2.s"] = state.pop("bijector.layers.2.log_s")
    old = tmp_path / "saved_before.npz"
    np.savez(old, __config__=np.array(json.dumps(flow.config)), **state)
    loaded = nf.load(old)
    np.testing.assert_array_equal(loaded.bijector.layers[2].params["log_s"],
                                  flow.bijector.layers[2].params["log_s"])
    x = rng.standard_normal((20, 2))
    np.testing.assert_array_equal(loaded.log_prob(x), flow.log_prob(x))
    with np.load(nf.save(loaded, tmp_path / "saved_now"), allow_pickle=False) as f:
        assert sorted(f.files) == sorted([*flow.state_dict(), "__config__"])
    state["bijector.layers.0.s"] = state["bijector.layers.2.s"]  # no Scaling there
    np.savez(old, __config__=np.array(json.dumps(flow.config)), **state)
    with pytest.raises(ValueError, match="unexpected.*bijector.layers.0.s"):
        nf.load(old)


def test_save_refuses_to_overwrite(trained, tmp_path):
    flow, _ = trained
    path = nf.save(flow, tmp_path / "m.npz")
    before = open(path, "rb").read()
    with pytest.raises(FileExistsError):
        nf.save(models.realnvp(2), path)
    assert open(path, "rb").read() == before
    nf.save(flow, path, overwrite=True)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        nf.load(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="garbage.npz"):
        nf.load(garbage)
    no_config = tmp_path / "plain.npz"
    np.savez(no_config, a=np.zeros(3))
    with pytest.raises(ValueError, match="__config__"):
        nf.load(no_config)
    wrong_shape = tmp_path / "wrong.npz"
    flow = models.realnvp(2, n_layers=2)
    state = flow.state_dict()
    state["bijector.layers.0.net.layers.0.W"] = np.zeros((5, 5))
    np.savez(wrong_shape, __config__=np.array(json.dumps(flow.config)), **state)
    with pytest.raises(ValueError, match="shape"):
        nf.load(wrong_shape)


def test_hand_built_flow_cannot_be_saved(tmp_path):
    from nflows_edu.bijectors import Reverse
    from nflows_edu.distributions import StandardNormal
    flow = nf.Flow(nf.Chain([Reverse(2)]), StandardNormal(2))
    with pytest.raises(ValueError, match="models"):
        nf.save(flow, tmp_path / "x.npz")
    assert not os.path.exists(tmp_path / "x.npz")


def test_non_finite_loss_stops_and_restores_last_good_parameters(rng):
    """A layer whose output blows up after a few steps: fit must stop with a message and leave
    the parameters at their last finite-loss values."""
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=rng)
    data = datasets.toy("8gaussians", 1000, rng)
    calls = {"n": 0}
    real = flow.loss_and_grad

    def poisoned(x):
        calls["n"] += 1
        loss = real(x)
        if calls["n"] == 4:
            for _, p, _ in flow.parameters():
                snapshot.append(p.copy())
            return float("nan")
        return loss

    snapshot = []
    flow.loss_and_grad = poisoned
    with pytest.raises(train.NonFiniteLossError, match="step 3"):
        train.fit(flow, data, steps=10, batch_size=32, lr=1e-2, rng=rng, progress=False)
    # the parameters that gave the NaN were those after step 2's update; fit must have
    # gone back to the ones that gave the last finite loss (before that update)
    restored = [p for _, p, _ in flow.parameters()]
    assert any(not np.array_equal(a, b) for a, b in zip(restored, snapshot))
    assert np.isfinite(flow.log_prob(data)).all()


def test_fit_validation_and_history(rng):
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=rng)
    data = datasets.toy("moons", 500, rng)
    h = train.fit(flow, data, steps=20, batch_size=64, rng=rng, val_data=data[:100],
                  eval_every=10, progress=False)
    assert h["step"] == [10, 20] and len(h["loss"]) == 20 and len(h["val_nll"]) == 2
    with pytest.raises(ValueError, match="optimizer"):
        train.fit(flow, data, steps=1, optimizer="rmsprop", progress=False)
    with pytest.raises(ValueError, match="steps"):
        train.fit(flow, data, steps=0, progress=False)
    h = train.fit(flow, data, steps=5, batch_size=64, rng=rng, optimizer="sgd", lr=1e-3,
                  progress=False)
    assert np.isfinite(h["loss"]).all()


def test_learning_rate_schedule():
    assert train.learning_rate(0, 100, 1.0) == 1.0
    assert abs(train.learning_rate(50, 100, 1.0) - 0.5) < 1e-12
    assert train.learning_rate(99, 100, 1.0, "constant") == 1.0
    assert train.learning_rate(0, 100, 1.0, warmup=10) == 0.1


@pytest.mark.parametrize("config", ['{"model": "realnvp", "dim": 2, "colour": 3}', '[1, 2]',
                                    '{"model": "glow"}'])
def test_load_names_the_file_for_a_bad_config(config, tmp_path):
    path = tmp_path / "bad_config.npz"
    np.savez(path, __config__=np.array(config))
    with pytest.raises(ValueError, match="bad_config.npz"):
        nf.load(path)


def test_coupling_follows_a_mask_loaded_into_it(rng):
    """The coupling layers cache their index arrays; a mask copied in by load_state_dict (in
    place) must still be the mask the layer uses."""
    from nflows_edu.bijectors import AffineCoupling
    layer = gradcheck.randomize_parameters(AffineCoupling([1, 0, 1, 0], (8,), rng=rng), rng)
    x = rng.standard_normal((5, 4))
    before, _, _ = layer.forward(x)
    state = layer.state_dict()
    state["mask"] = np.array([0, 1, 0, 1])
    layer.load_state_dict(state)
    after, _, _ = layer.forward(x)
    assert np.array_equal(layer.idx_a, [1, 3]) and np.array_equal(layer.idx_b, [0, 2])
    assert np.allclose(after[:, [1, 3]], x[:, [1, 3]])   # the new mask's half passes through
    assert not np.allclose(before, after)
