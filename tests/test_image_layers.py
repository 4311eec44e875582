"""Image layers (N, C, H, W): Conv2d against a direct loop and central differences; ActNorm's
data-dependent initialisation; the 1x1 convolutions; Squeeze. The registry checks (round trip,
log-det, VJPs) of the bijectors run in test_bijectors.py."""
import numpy as np
import pytest

from nflows_edu import gradcheck
from nflows_edu.nn import Conv2d


def conv2d_loop(x, W, b):
    """y[n, o, h, w] = b[o] + sum_{c,i,j} W[o, c, i, j] xp[n, c, h + i, w + j], pixel by pixel."""
    n, c, h, w = x.shape
    o, _, k, _ = W.shape
    p = k // 2
    xp = np.zeros((n, c, h + 2 * p, w + 2 * p))
    xp[:, :, p:p + h, p:p + w] = x
    y = np.zeros((n, o, h, w))
    for a in range(n):
        for q in range(o):
            for r in range(h):
                for s in range(w):
                    y[a, q, r, s] = b[q] + np.sum(W[q] * xp[a, :, r:r + k, s:s + k])
    return y


@pytest.mark.parametrize("c_in, c_out, k, h, w", [(1, 2, 3, 5, 4), (3, 4, 1, 3, 3),
                                                  (2, 3, 5, 4, 6), (2, 2, 3, 1, 2)])
def test_conv2d_forward_equals_direct_loop(c_in, c_out, k, h, w, rng):
    conv = Conv2d(c_in, c_out, k, rng=rng)
    x = rng.standard_normal((3, c_in, h, w))
    y, _ = conv.forward(x)
    assert y.shape == (3, c_out, h, w)
    expected = conv2d_loop(x, conv.params["W"], conv.params["b"])
    assert np.abs(y - expected).max() <= 1e-12


@pytest.mark.parametrize("c_in, c_out, k", [(1, 2, 3), (3, 2, 1), (2, 3, 5)])
def test_conv2d_backward_against_central_differences(c_in, c_out, k, rng):
    conv = Conv2d(c_in, c_out, k, rng=rng)
    errors = gradcheck.check_module(conv, rng.standard_normal((2, c_in, 4, 3)), rng)
    assert set(errors) == {"x", "W", "b"}
    assert max(errors.values()) <= 1e-6, errors


def test_conv2d_zero_init_and_bad_input(rng):
    conv = Conv2d(2, 3, 3, rng=rng, zero=True)
    y, _ = conv.forward(rng.standard_normal((2, 2, 4, 4)))
    assert not y.any()
    with pytest.raises(ValueError, match=r"Conv2d.*shape \(N, 2, H, W\)"):
        conv.forward(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="Conv2d.*shape"):
        conv.forward(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="Conv2d.*finite"):
        conv.forward(np.full((1, 2, 2, 2), np.nan))
    for k in (2, 0, 1.5):
        with pytest.raises(ValueError, match="odd"):
            Conv2d(2, 3, k)


# ------------------------------------------------------------------------------- ActNorm
from nflows_edu.bijectors import ActNorm, Invertible1x1Conv, LUInvertible1x1Conv  # noqa: E402


def test_actnorm_initialize_normalizes_each_channel(rng):
    layer = ActNorm(3)
    x = rng.standard_normal((8, 3, 4, 5)) * np.array([0.1, 2.0, 5.0])[None, :, None, None] \
        + np.array([-3.0, 0.5, 7.0])[None, :, None, None]
    assert layer.initialize(x) is True
    z, logdet, _ = layer.forward(x)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)
    np.testing.assert_allclose(logdet, 20 * -np.log(x.std(axis=(0, 2, 3)) + 1e-6).sum())
    assert int(layer.buffers["initialized"]) == 1


def test_actnorm_initialisation_is_saved_and_not_redone(rng):
    layer = ActNorm(2)
    layer.initialize(rng.standard_normal((4, 2, 3, 3)) * 3 + 1)
    layer.params["log_s"] += 0.5  # as if trained
    state = layer.state_dict()
    assert "initialized" in state
    loaded = ActNorm(2)
    loaded.load_state_dict(state)
    assert int(loaded.buffers["initialized"]) == 1
    assert loaded.initialize(rng.standard_normal((4, 2, 3, 3))) is False
    np.testing.assert_array_equal(loaded.params["log_s"], state["log_s"])
    np.testing.assert_array_equal(loaded.params["b"], state["b"])
    assert loaded.initialize(rng.standard_normal((4, 2, 3, 3)), force=True) is True
    assert not np.array_equal(loaded.params["log_s"], state["log_s"])


def test_actnorm_initialize_updates_parameters_in_place(rng):
    layer = ActNorm(2)
    arrays = [layer.params["log_s"], layer.params["b"]]
    layer.initialize(rng.standard_normal((2, 2, 2, 2)))
    assert layer.params["log_s"] is arrays[0] and layer.params["b"] is arrays[1]


# ---------------------------------------------------------------------------- 1x1 convolutions
def test_1x1_conv_is_a_per_pixel_matrix_product(rng):
    layer = Invertible1x1Conv(3, rng=rng)
    W = layer.params["W"]
    np.testing.assert_allclose(W @ W.T, np.eye(3), atol=1e-12)  # starts as a rotation
    np.testing.assert_allclose(np.linalg.det(W), 1.0, atol=1e-12)
    x = rng.standard_normal((2, 3, 4, 5))
    z, logdet, _ = layer.forward(x)
    np.testing.assert_allclose(z, np.einsum("ij,njhw->nihw", W, x), atol=1e-14)
    # a permutation matrix is the special case a fixed channel permutation is
    layer.params["W"][...] = np.eye(3)[[2, 0, 1]]
    z, logdet, _ = layer.forward(x)
    np.testing.assert_array_equal(z, x[:, [2, 0, 1]])
    np.testing.assert_allclose(logdet, 0, atol=1e-12)


def test_lu_1x1_conv_weight_and_logdet_match_slogdet(rng):
    layer = gradcheck.randomize_parameters(LUInvertible1x1Conv(4, rng=rng), rng, 0.3)
    W, factors = layer.weight()
    L_1, U_s = factors
    np.testing.assert_allclose(W, layer.buffers["P"] @ L_1 @ U_s)
    np.testing.assert_allclose(L_1, np.tril(L_1)) and np.testing.assert_allclose(U_s, np.triu(U_s))
    np.testing.assert_allclose(layer.log_abs_det(), np.linalg.slogdet(W)[1], atol=1e-12)
    np.testing.assert_allclose(layer.inverse_weight(factors), np.linalg.inv(W), atol=1e-10)
    _, logdet, _ = layer.forward(rng.standard_normal((2, 4, 3, 2)))
    np.testing.assert_allclose(logdet, 6 * np.linalg.slogdet(W)[1], atol=1e-12)


def test_lu_1x1_conv_starts_as_the_rotation_it_was_built_from():
    plain = Invertible1x1Conv(5, rng=np.random.default_rng(3))
    lu = LUInvertible1x1Conv(5, rng=np.random.default_rng(3))
    np.testing.assert_allclose(lu.weight()[0], plain.params["W"], atol=1e-12)


def test_lu_1x1_conv_rejects_a_loaded_non_permutation(rng):
    layer = LUInvertible1x1Conv(3, rng=rng)
    state = layer.state_dict()
    state["P"] = np.full((3, 3), 0.5)
    with pytest.raises(ValueError, match="permutation"):
        layer.load_state_dict(state)


@pytest.mark.parametrize("make", [lambda: ActNorm(3), lambda: Invertible1x1Conv(3),
                                  lambda: LUInvertible1x1Conv(3)])
def test_image_bijectors_name_the_expected_shape(make):
    layer = make()
    name = type(layer).__name__
    for method in (layer.forward, layer.inverse):
        with pytest.raises(ValueError, match=rf"{name}.*shape \(N, 3, H, W\).*\(2, 4, 5, 5\)"):
            method(np.zeros((2, 4, 5, 5)))
        with pytest.raises(ValueError, match=rf"{name}.*shape \(N, 3, H, W\)"):
            method(np.zeros((2, 3, 5)))


# ------------------------------------------------------------------------------------ Squeeze
from nflows_edu.bijectors import Squeeze  # noqa: E402


def test_squeeze_moves_each_2x2_block_into_channels(rng):
    x = rng.standard_normal((2, 3, 4, 6))
    z, logdet, _ = Squeeze(3).forward(x)
    assert z.shape == (2, 12, 2, 3)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                np.testing.assert_array_equal(z[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    assert not logdet.any()
    np.testing.assert_array_equal(Squeeze().inverse(z)[0], x)


def test_squeeze_rejects_odd_sizes_and_wrong_channels():
    for shape in [(1, 2, 3, 4), (1, 2, 4, 5)]:
        with pytest.raises(ValueError, match="Squeeze.*even"):
            Squeeze(2).forward(np.zeros(shape))
    with pytest.raises(ValueError, match=r"Squeeze.*shape \(N, 2, H, W\)"):
        Squeeze(2).forward(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"Squeeze.inverse.*shape \(N, 8, H, W\)"):
        Squeeze(2).inverse(np.zeros((1, 4, 2, 2)))
    with pytest.raises(ValueError, match="Squeeze.inverse.*multiple of 4"):
        Squeeze().inverse(np.zeros((1, 6, 2, 2)))


def test_convnet_backward_against_central_differences(rng):
    from nflows_edu.nn import ConvNet
    net = gradcheck.randomize_parameters(
        ConvNet((2, 3, 3, 4), kernels=(3, 1, 3), activation="tanh", zero_last=True, rng=rng),
        rng, 0.3)
    errors = gradcheck.check_module(net, rng.standard_normal((2, 2, 3, 4)), rng)
    assert max(errors.values()) <= 1e-6, errors
    with pytest.raises(ValueError, match="kernel sizes"):
        ConvNet((2, 3, 4), kernels=(3,))


# ------------------------------------------------------------------- image affine coupling
from nflows_edu.bijectors import ImageAffineCoupling, channel_mask, checkerboard_mask  # noqa: E402


def test_masks():
    m = checkerboard_mask(2, 3, 4, parity=1)
    assert m.shape == (2, 3, 4) and (m[0] == m[1]).all()
    np.testing.assert_array_equal(m[0, :2, :2], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(checkerboard_mask(1, 2, 2) + checkerboard_mask(1, 2, 2, 1), 1)
    np.testing.assert_array_equal(channel_mask(3, 1, 1).ravel(), [1, 0, 0])
    np.testing.assert_array_equal(channel_mask(3, 1, 1, parity=1).ravel(), [0, 1, 1])


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
def test_image_coupling_keeps_the_masked_half_and_starts_as_identity(mask, rng):
    layer = ImageAffineCoupling(2, mask, hidden=(4,), activation="tanh", rng=rng)
    x = rng.standard_normal((3, 2, 4, 4))
    z, logdet, _ = layer.forward(x)
    np.testing.assert_array_equal(z, x)  # zero-initialised last convolution
    assert not logdet.any()
    gradcheck.randomize_parameters(layer, rng, 0.5)
    z, logdet, _ = layer.forward(x)
    m = layer.mask(4, 4).astype(bool)
    np.testing.assert_array_equal(z[:, m], x[:, m])
    assert np.abs(z[:, ~m] - x[:, ~m]).max() > 1e-3
    # the changed half depends on itself only elementwise (a triangular Jacobian)
    J = gradcheck.numerical_jacobian(lambda v: layer.forward(v)[0], x[:1])[0]
    b = np.flatnonzero(~m.ravel())
    Jbb = J[np.ix_(b, b)]
    assert np.abs(Jbb - np.diag(np.diag(Jbb))).max() < 1e-9


def test_image_coupling_rejects_bad_configuration():
    with pytest.raises(ValueError, match="at least 2 channels"):
        ImageAffineCoupling(1, "channel")
    with pytest.raises(ValueError, match="mask"):
        ImageAffineCoupling(2, "stripes")
    with pytest.raises(ValueError, match=r"ImageAffineCoupling.*shape \(N, 2, H, W\)"):
        ImageAffineCoupling(2).forward(np.zeros((1, 3, 4, 4)))


def test_image_layers_keep_float32(rng):
    """Training runs in float32: every output, log-det and gradient stays float32."""
    from nflows_edu.bijectors import Squeeze as Sq
    x = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    layers = [ActNorm(4, dtype=np.float32), Invertible1x1Conv(4, rng=rng, dtype=np.float32),
              LUInvertible1x1Conv(4, rng=rng, dtype=np.float32), Sq(4),
              ImageAffineCoupling(4, hidden=(8,), rng=rng, dtype=np.float32),
              gradcheck.randomize_parameters(
                  ImageSplineCoupling(4, hidden=(8,), rng=rng, dtype=np.float32), rng, 0.1)]
    for layer in layers:
        z, logdet, cache = layer.forward(x)
        x_back, logdet_inv, cache_inv = layer.inverse(z)
        dx = layer.backward(z, logdet, cache)
        dz = layer.inverse_backward(x_back, logdet_inv, cache_inv)
        arrays = [z, logdet, x_back, logdet_inv, dx, dz] + [g for _, _, g in layer.parameters()]
        assert all(a.dtype == np.float32 for a in arrays), type(layer).__name__
        assert np.abs(x_back - x).max() < 1e-5


# ------------------------------------------------------------------- image spline coupling
from nflows_edu.bijectors import ImageSplineCoupling  # noqa: E402


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
def test_image_spline_coupling_keeps_the_masked_half_and_starts_as_identity(mask, rng):
    layer = ImageSplineCoupling(4, mask, 1, hidden=(4,), activation="tanh", n_bins=5,
                                bound=2.0, rng=rng)
    x = rng.normal(0, 1.5, (3, 4, 4, 4))
    z, logdet, _ = layer.forward(x)
    assert np.abs(z - x).max() <= 1e-12 and np.abs(logdet).max() <= 1e-12  # theta = 0
    gradcheck.randomize_parameters(layer, rng, 0.3)
    z, logdet, _ = layer.forward(x)
    m = layer.mask(4, 4).astype(bool)
    np.testing.assert_array_equal(z[:, m], x[:, m])
    changed = ~m & (np.abs(x) < 2.0)  # inside [-B, B]; outside, the identity tails
    tails = ~m & (np.abs(x) > 2.0)
    assert tails.any() and np.abs(z[changed] - x[changed]).min() > 0
    np.testing.assert_array_equal(z[tails], x[tails])
    # a transformed element depends on itself only elementwise (a diagonal block)
    J = gradcheck.numerical_jacobian(lambda v: layer.forward(v)[0], x[:1])[0]
    b = np.flatnonzero(~m.ravel())
    Jbb = J[np.ix_(b, b)]
    assert np.abs(Jbb - np.diag(np.diag(Jbb))).max() < 1e-9
    np.testing.assert_allclose(logdet[0], np.log(np.diag(Jbb)).sum(), atol=1e-7)


def test_image_spline_coupling_reads_theta_as_parameter_then_channel(rng):
    """The net's output channel j C + c holds parameter j of channel c: changing the outputs
    of the kept channels (channel mask, parity 0: the first C // 2) leaves z unchanged, and
    changing an output of a transformed channel does not."""
    C, K = 4, 3
    layer = ImageSplineCoupling(C, "channel", hidden=(3,), activation="tanh", n_bins=K,
                                bound=3.0, rng=rng)
    gradcheck.randomize_parameters(layer, rng, 0.3)
    x = rng.standard_normal((2, C, 3, 3))
    z, logdet, _ = layer.forward(x)
    last = layer.net.layers[-1].params["b"]  # the last convolution's bias, (3K - 1) C
    kept = [j * C + c for j in range(3 * K - 1) for c in range(C // 2)]
    last[kept] += 5.0
    z_kept, logdet_kept, _ = layer.forward(x)
    np.testing.assert_array_equal(z_kept, z)
    np.testing.assert_array_equal(logdet_kept, logdet)
    last[1 * C + C // 2] += 1.0  # the second bin width of the first transformed channel
    z_used, _, _ = layer.forward(x)
    assert np.abs(z_used[:, C // 2] - z[:, C // 2]).max() > 1e-3
    np.testing.assert_array_equal(z_used[:, C // 2 + 1:], z[:, C // 2 + 1:])


def test_image_spline_coupling_names_itself_in_errors():
    for kwargs, words in [(dict(n_bins=1), "n_bins"), (dict(bound=0.0), "bound"),
                          (dict(min_width=0.5, n_bins=4), "min_width"),
                          (dict(mask="stripes"), "mask")]:
        with pytest.raises(ValueError, match=f"ImageSplineCoupling.*{words}"):
            ImageSplineCoupling(2, **kwargs)
    with pytest.raises(ValueError, match="ImageSplineCoupling.*at least 2 channels"):
        ImageSplineCoupling(1, "channel")
    layer = ImageSplineCoupling(2, hidden=(3,))
    for method in (layer.forward, layer.inverse):
        with pytest.raises(ValueError, match=r"ImageSplineCoupling.*shape \(N, 2, H, W\)"):
            method(np.zeros((1, 3, 4, 4)))
