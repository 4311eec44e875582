"""Defects found by an adversarial review: each reproduced, each refused with a ValueError
that names the file and the field (the loader) or the function and what it expected."""
import json
from fractions import Fraction

import numpy as np
import pytest

import nflows_edu as nf
from nflows_edu import gradcheck, models
from nflows_edu.bijectors import AffineCoupling


def _saved(tmp_path, flow=None, edit_config=None, edit_arrays=None):
    flow = flow or models.realnvp(2, n_layers=2, hidden=(8,), rng=np.random.default_rng(0))
    config = dict(flow.config)
    state = flow.state_dict()
    if edit_config:
        edit_config(config)
    if edit_arrays:
        edit_arrays(state)
    path = tmp_path / "doctored.npz"
    np.savez(path, __config__=np.array(json.dumps(config)), **state)
    return path


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(hidden=[10**7]), "'hidden'"),
    (lambda c: c.update(n_layers=10**6), "'n_layers'"),
    (lambda c: c.update(dtype="int64"), "'dtype'"),
    (lambda c: c.update(dtype="complex128"), "'dtype'"),
    (lambda c: c.update(s_max=0), "s_max"),
    (lambda c: c.update(s_max=float("nan")), "s_max"),
    (lambda c: c.update(model="glowish"), "'model'"),
])
def test_loader_refuses_a_doctored_config(edit, words, tmp_path):
    path = _saved(tmp_path, edit_config=edit)
    with pytest.raises(ValueError, match=words) as err:
        nf.load(path)
    assert "doctored.npz" in str(err.value)


def test_loader_refuses_non_finite_and_mistyped_arrays(tmp_path):
    name = "bijector.layers.0.net.layers.0.W"

    def nan(state):
        state[name][0, 0] = np.nan

    def ints(state):
        state[name] = state[name].astype(np.int64)

    def complex_(state):
        state[name] = state[name].astype(np.complex128)

    for edit, words in ((nan, "NaN"), (ints, "dtype"), (complex_, "dtype")):
        with pytest.raises(ValueError, match=words) as err:
            nf.load(_saved(tmp_path, edit_arrays=edit))
        assert name in str(err.value)


def test_loader_refuses_a_mask_the_net_cannot_take(tmp_path):
    def three_ones(state):
        state["bijector.layers.0.mask"] = np.array([1, 1])
    with pytest.raises(ValueError, match="mask"):
        nf.load(_saved(tmp_path, edit_arrays=three_ones))


def test_a_loaded_mask_is_the_mask_used(rng):
    a = AffineCoupling([1, 0, 0, 1], (8,), "tanh", rng=rng, zero_init=False)
    b = AffineCoupling([1, 0, 0, 1], (8,), "tanh", rng=rng, zero_init=False)
    state = a.state_dict()
    state["mask"] = np.array([0, 1, 1, 0])
    b.load_state_dict(state)
    x = rng.standard_normal((5, 4))
    z, _, _ = b.forward(x)
    np.testing.assert_array_equal(z[:, [1, 2]], x[:, [1, 2]])  # the new mask's kept columns
    fresh = AffineCoupling([0, 1, 1, 0], (8,), "tanh", rng=rng)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.forward(x)[0], z)


def test_loader_refuses_an_npy_and_pickles_without_suggesting_allow_pickle(tmp_path):
    npy = tmp_path / "model.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="model.npy"):
        nf.load(npy)
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, __config__=np.array(json.dumps({"model": "nice"})),
             a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError) as err:
        nf.load(pickled)
    assert "allow_pickle" not in str(err.value) and "objects.npz" in str(err.value)


def test_load_finds_model_npz_in_a_directory(tmp_path):
    flow = models.nice(2, n_layers=2, hidden=(8,), rng=np.random.default_rng(0))
    nf.save(flow, tmp_path / "model.npz")
    x = np.random.default_rng(1).standard_normal((4, 2))
    np.testing.assert_array_equal(nf.load(tmp_path).log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("s_max", [0, -1.0, float("inf"), float("nan")])
def test_affine_coupling_refuses_a_bad_bound(s_max):
    with pytest.raises(ValueError, match="s_max"):
        AffineCoupling([1, 0], s_max=s_max)


@pytest.mark.parametrize("build", [models.nice, models.realnvp])
def test_zero_layers_is_refused_by_both_models(build):
    with pytest.raises(ValueError, match="n_layers >= 1"):
        build(2, n_layers=0)


@pytest.mark.parametrize("bad, words", [
    (np.array([[1 + 2j, 0.0]]), "real numbers"),
    (np.array([["2020-01-01", "2020-01-02"]], dtype="datetime64[D]"), "real numbers"),
    (np.array([["a", "b"]]), "real numbers"),
])
def test_flows_refuse_complex_datetime_and_strings(bad, words):
    flow = models.realnvp(2, n_layers=2, hidden=(8,))
    with pytest.raises(ValueError, match=words):
        flow.log_prob(bad)


@pytest.mark.parametrize("n", [float("inf"), float("nan"), 0, -3, 2.5, "7", True])
def test_sample_refuses_a_bad_count(n):
    flow = models.nice(2, n_layers=1, hidden=(4,))
    with pytest.raises(ValueError, match="whole number"):
        flow.sample(n)


def test_sample_wants_a_generator():
    flow = models.nice(2, n_layers=1, hidden=(4,))
    with pytest.raises(ValueError, match="default_rng"):
        flow.sample(3, rng=7)
    assert flow.sample(3.0, rng=np.random.default_rng(0)).shape == (3, 2)


def test_float32_flow_names_the_range_not_the_layer():
    flow = models.realnvp(2, n_layers=2, hidden=(8,), dtype=np.float32)
    with pytest.raises(ValueError, match="float32") as err:
        flow.log_prob(np.array([[1e300, 0.0]]))
    assert "AffineCoupling" not in str(err.value)


@pytest.mark.parametrize("name", gradcheck.layer_names())
def test_every_layer_takes_an_object_array_of_floats_as_numpy_does(name, rng):
    # reported: x.astype(object) was refused by every layer, though np.asarray(x, float)
    # converts it exactly
    layer, x = gradcheck.make_layer(name, rng)
    z = layer.forward(x)[0]
    for method, inputs in ((layer.forward, x), (layer.inverse, z)):
        want, want_logdet, _ = method(inputs)
        got, got_logdet, _ = method(inputs.astype(object))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_logdet, want_logdet)


@pytest.mark.parametrize("value, words", [
    ("0.5", "str"), (1 + 2j, "complex"), (None, "NoneType"),
    (Fraction(1, 3), "round"), (2**60 + 1, "round"), (float("nan"), "finite"),
])
def test_an_object_array_that_does_not_convert_exactly_is_refused(value, words):
    flow = models.realnvp(2, n_layers=2, hidden=(8,))
    x = np.array([[0.25, value]], dtype=object)
    with pytest.raises(ValueError, match=words):
        flow.log_prob(x)


def test_an_object_array_of_exact_reals_is_taken():
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=np.random.default_rng(0))
    x = np.array([[Fraction(1, 2), 3], [np.float32(0.1), True]], dtype=object)
    want = flow.log_prob(np.array([[0.5, 3.0], [float(np.float32(0.1)), 1.0]]))
    np.testing.assert_array_equal(flow.log_prob(x), want)
