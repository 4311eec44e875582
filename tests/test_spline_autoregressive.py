"""SplineAutoregressive specifics: the MADE's P outputs per feature, the triangular Jacobian,
the Numba kernel of the sequential inverse against the NumPy loop (tails included), bad
options, and nsf_ar's save / load. (The registry checks in test_bijectors.py cover round
trips, log-dets and the VJP.)"""
import numpy as np
import pytest

from nflows_edu import gradcheck, io, kernels, models
from nflows_edu.bijectors import MAF, SplineAutoregressive
from nflows_edu.bijectors import spline_autoregressive
from nflows_edu.bijectors.spline_autoregressive import spline_ar_inverse_reference
from nflows_edu.nn import MADE


@pytest.mark.parametrize("n_params", [1, 2, 5])
def test_made_with_p_outputs_per_feature_is_strictly_triangular(n_params, rng):
    dim = 5
    made = MADE(dim, (7, 6), rng.permutation(dim), rng=rng, n_params=n_params)
    paths = made.mask_product()
    assert paths.shape == (dim, n_params * dim)
    rank = np.argsort(made.order)
    allowed = rank[:, None] < rank[None, :]
    for p in range(n_params):  # output p * D + i is parameter p of feature i
        block = paths[:, p * dim:(p + 1) * dim]
        assert (block[~allowed] == 0).all() and (block[allowed] > 0).all()


def test_made_default_is_the_two_outputs_it_always_had(rng):
    made = MADE(4, (6,), "reversed", rng=np.random.default_rng(1))
    again = MADE(4, (6,), "reversed", rng=np.random.default_rng(1), n_params=2)
    in_deg = made.degrees[0]
    assert np.array_equal(made.degrees[-1], np.concatenate([in_deg, in_deg]))
    x = rng.standard_normal((3, 4))
    assert np.array_equal(made.forward(x)[0], again.forward(x)[0])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="n_params"):
            MADE(4, (6,), n_params=bad)


def _moved_layer(rng, dim, hidden, order, activation, n_bins, bound, dtype=np.float64,
                 use_kernel=True):
    layer = SplineAutoregressive(dim, hidden, order, activation, n_bins, bound, rng=rng,
                                 dtype=dtype, use_kernel=use_kernel)
    for _, p, _ in layer.parameters():
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return layer


def test_untrained_layer_is_the_identity(rng):
    layer = SplineAutoregressive(3, (8,), rng=rng)
    x = rng.normal(0, 3, (6, 3))
    for method in (layer.forward, layer.inverse):
        out, logdet, _ = method(x)
        assert np.abs(out - x).max() < 1e-14 and np.abs(logdet).max() < 1e-14


def test_jacobian_is_triangular_in_the_order_with_the_splines_on_the_diagonal(rng):
    dim = 4
    layer = _moved_layer(rng, dim, (9, 9), rng.permutation(dim), "tanh", 5, 2.0)
    x = rng.normal(0, 1.2, (3, dim))
    jac = gradcheck.numerical_jacobian(lambda v: layer.forward(v)[0], x)  # (N, D, D)
    p = layer.made.order
    in_order = jac[:, p][:, :, p]  # [n, output rank, input rank]
    assert np.abs(np.triu(in_order, 1)).max() == 0.0  # z_i does not see x_j after i
    assert np.abs(np.tril(in_order, -1)).max() > 1e-3  # and does see the ones before
    diagonal = np.log(np.abs(np.diagonal(jac, axis1=1, axis2=2))).sum(axis=1)
    assert np.abs(diagonal - layer.forward(x)[1]).max() < 1e-7


CASES = [  # dim, hidden, activation, n_bins, batch (full tiles, ragged, fewer than a tile)
    (2, (), "tanh", 2, 5),
    (3, (2,), "relu", 4, 40),
    (5, (13, 9), "tanh", 8, 2 * kernels.TILE),
    (8, (24, 17), "leaky_relu", 3, 3 * kernels.TILE + 7),
    (12, (30, 11, 16), "tanh", 6, 70),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_kernel_equals_the_numpy_reference_inside_and_in_the_tails(case, dtype):
    rng = np.random.default_rng(case)
    dim, hidden, act, n_bins, n = CASES[case]
    bound = 2.0
    layer = _moved_layer(rng, dim, hidden, rng.permutation(dim), act, n_bins, bound, dtype)
    z = rng.normal(0, 1.6, (n, dim)).astype(dtype)
    z[0, :] = np.linspace(-3.0, 3.0, dim)  # both tails in every batch
    assert (z > bound).any() and (z < -bound).any() and (np.abs(z) < bound).mean() > 0.5
    x, logdet = kernels.spline_ar_inverse(layer.made, z, n_bins, layer.options)
    x_ref, logdet_ref = spline_ar_inverse_reference(layer.made, z, n_bins, layer.options)
    assert x.dtype == dtype and logdet.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-4
    assert np.abs(x - x_ref).max() <= tol * max(1.0, np.abs(x_ref).max())
    assert np.abs(logdet - logdet_ref).max() <= tol * max(1.0, np.abs(logdet_ref).max())
    # the tails really are the identity, and the spline inside really moves the points
    tails = np.abs(z) > bound
    assert np.array_equal(x[tails], z[tails])
    assert np.abs(x - z)[~tails].max() > 1e-2


def test_kernel_tiles_and_threads_do_not_change_the_result(rng):
    layer = _moved_layer(rng, 6, (16, 16), "reversed", "tanh", 5, 2.0)
    z = rng.normal(0, 1.5, (5 * kernels.TILE + 3, 6))
    args = (layer.made, z, 5, layer.options)
    first = kernels.spline_ar_inverse(*args)
    for kwargs in (dict(tile=1), dict(tile=7), dict(threads=1), dict(threads=3), dict(align=1)):
        x, logdet = kernels.spline_ar_inverse(*args, **kwargs)
        assert np.array_equal(x, first[0]) and np.array_equal(logdet, first[1]), kwargs


def test_the_layer_inverse_uses_the_kernel_or_the_reference(rng, monkeypatch):
    layer = _moved_layer(rng, 3, (8,), "natural", "tanh", 4, 2.0)
    z = rng.standard_normal((5, 3))
    calls = []
    for module, name in ((kernels, "spline_ar_inverse"),
                         (spline_autoregressive, "spline_ar_inverse_reference")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, real=real, name=name: calls.append(name) or real(*a))
    x_kernel = layer.inverse(z)[0]
    layer.use_kernel = False
    x_ref = layer.inverse(z)[0]
    assert calls == ["spline_ar_inverse", "spline_ar_inverse_reference"]
    assert np.abs(x_kernel - x_ref).max() <= 1e-12


def test_inverse_has_no_vjp_and_says_which_direction_trains(rng):
    layer = SplineAutoregressive(3, (4,), rng=rng)
    assert layer.vjps == ("forward",) and MAF.vjps == layer.vjps
    with pytest.raises(NotImplementedError, match="forward direction"):
        layer.inverse_backward(np.ones((2, 3)), np.ones(2), None)


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_bins=1), "n_bins K an integer >= 2"),
    (dict(bound=0.0), "positive finite bound"),
    (dict(bound=-1.0), "positive finite bound"),
    (dict(n_bins=10, min_width=0.1), "min_width < 1/K"),
    (dict(n_bins=4, min_height=0.3), "min_height < 1/K"),
    (dict(min_derivative=0.0), "positive min_derivative"),
])
def test_bad_options_are_refused_naming_the_layer(kwargs, words):
    with pytest.raises(ValueError, match=words) as err:
        SplineAutoregressive(3, (4,), **kwargs)
    assert "SplineAutoregressive" in str(err.value)
    if set(kwargs) <= {"n_bins", "bound"}:  # the model's own options
        with pytest.raises(ValueError, match=words):
            models.nsf_ar(3, n_layers=1, hidden=(4,), **kwargs)


def test_non_finite_parameters_are_refused_in_both_directions(rng):
    layer = SplineAutoregressive(3, (4,), rng=rng, zero_init=False)
    layer.made.layers[-1].params["W"][0, 0] = np.nan
    x = rng.standard_normal((3, 3))
    for method in (layer.forward, layer.inverse):
        with np.errstate(invalid="ignore"), \
                pytest.raises(ValueError, match="SplineAutoregressive: expected finite"):
            method(x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nsf_ar_saves_and_loads_exactly(dtype, rng, tmp_path):
    flow = models.nsf_ar(4, n_layers=3, hidden=(12, 12), n_bins=5, bound=3.0, rng=rng,
                         dtype=dtype)
    for _, p, _ in flow.parameters():
        p += (0.1 * rng.standard_normal(p.shape)).astype(dtype)
    orders = [layer.made.order for layer in flow.bijector.layers]
    assert np.array_equal(orders[0], [0, 1, 2, 3]) and np.array_equal(orders[1], [3, 2, 1, 0])
    loaded = io.load(io.save(flow, tmp_path / "nsf_ar"))
    assert loaded.config == flow.config and loaded.config["model"] == "nsf_ar"
    x = rng.normal(0, 2, (7, 4))
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    assert loaded.log_prob(x).dtype == dtype
    assert np.array_equal(loaded.sample(5, np.random.default_rng(1)),
                          flow.sample(5, np.random.default_rng(1)))
