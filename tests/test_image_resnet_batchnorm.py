"""RealNVP's ResNet conditioner and the per-channel BatchNorm2d of images: backward passes
against central differences, initialisation, modes, and bad input. The registry checks of
BatchNorm2d in evaluation mode (round trip, log-det, VJPs) run in test_bijectors.py."""
import numpy as np
import pytest

from nflows_edu import gradcheck
from nflows_edu.bijectors import BatchNorm, BatchNorm2d
from nflows_edu.nn import ConvNet, ResNet

# ------------------------------------------------------------------------------------ ResNet


@pytest.mark.parametrize("activation, n_blocks", [("tanh", 2), ("relu", 1), ("tanh", 0)])
def test_resnet_backward_against_central_differences(activation, n_blocks, rng):
    net = gradcheck.randomize_parameters(
        ResNet(2, 4, hidden=3, n_blocks=n_blocks, activation=activation, rng=rng), rng, 0.3)
    x = rng.standard_normal((2, 2, 3, 4))
    if activation == "relu":  # central differences (eps 1e-6) must not straddle the kink
        assert np.abs(net.conv_in.forward(x)[0]).min() > 1e-4
    errors = gradcheck.check_module(net, x, rng)
    names = {name for name, _, _ in net.parameters()}
    assert set(errors) == {"x"} | names
    assert len(names) == 2 * (2 + 2 * n_blocks)  # W and b of every convolution
    assert max(errors.values()) <= 1e-6, errors


def test_resnet_is_the_residual_sum_of_its_parts(rng):
    net = gradcheck.randomize_parameters(ResNet(3, 2, hidden=4, n_blocks=2, activation="tanh",
                                                rng=rng), rng, 0.3)
    x = rng.standard_normal((2, 3, 4, 4))
    h = net.conv_in.forward(x)[0]
    for block in net.blocks:
        h = h + block.forward(np.tanh(h))[0]
    expected = net.conv_out.forward(np.tanh(h))[0]
    np.testing.assert_allclose(net.forward(x)[0], expected, atol=1e-13)
    assert all(isinstance(block, ConvNet) for block in net.blocks)


def test_resnet_zero_last_gives_zero_output_and_shapes(rng):
    net = ResNet(2, 4, hidden=5, n_blocks=2, rng=rng)
    y, cache = net.forward(rng.standard_normal((3, 2, 5, 6)))
    assert y.shape == (3, 4, 5, 6) and not y.any()
    # the zero output layer still passes a gradient to its own weights
    net.zero_grad()
    net.backward(np.ones_like(y), cache)
    assert np.abs(net.conv_out.grads["W"]).max() > 0
    y, _ = ResNet(2, 4, hidden=5, zero_last=False, rng=rng).forward(np.ones((1, 2, 3, 3)))
    assert np.abs(y).max() > 0


def test_resnet_keeps_float32(rng):
    net = gradcheck.randomize_parameters(ResNet(2, 4, hidden=3, rng=rng, dtype=np.float32),
                                         rng, 0.3)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    y, cache = net.forward(x)
    dx = net.backward(np.ones_like(y), cache)
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for _, _, g in net.parameters())


def test_resnet_rejects_bad_input_and_configuration(rng):
    net = ResNet(2, 4, hidden=3, rng=rng)
    with pytest.raises(ValueError, match=r"ResNet.*shape \(N, 2, H, W\)"):
        net.forward(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"ResNet.*shape \(N, 2, H, W\)"):
        net.forward(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="ResNet.*finite"):
        net.forward(np.full((1, 2, 2, 2), np.nan))
    with pytest.raises(ValueError, match="n_blocks >= 0"):
        ResNet(2, 4, n_blocks=-1)
    with pytest.raises(ValueError, match="hidden >= 1"):
        ResNet(2, 4, hidden=0)
    with pytest.raises(ValueError, match="activation|expected one of"):
        ResNet(2, 4, activation="sigmoid")


def test_resnet_as_the_net_of_an_image_coupling(rng):
    """The interface ImageAffineCoupling uses (``net._forward(kept)``, ``net.backward(dout,
    cache)``): a coupling whose ConvNet is swapped for a ResNet starts as the identity and
    passes the bijector checks away from it."""
    from nflows_edu.bijectors import ImageAffineCoupling
    for mask in ("checkerboard", "channel"):
        layer = ImageAffineCoupling(2, mask, activation="tanh", s_max=2.0, rng=rng)
        layer.net = ResNet(2, 2 * 2, hidden=3, n_blocks=1, activation="tanh", zero_last=True,
                           rng=rng)
        x = rng.standard_normal((2, 2, 3, 3))
        z, logdet, _ = layer.forward(x)
        np.testing.assert_array_equal(z, x)
        assert not logdet.any()
        gradcheck.randomize_parameters(layer, rng, 0.3)
        report = gradcheck.check_bijector(layer, x, rng)
        assert report.roundtrip <= 1e-10 and report.logdet <= 1e-7, report
        assert not report.problems, report
        for errors in report.grad_errors.values():
            assert {"x", "net.conv_out.W", "net.blocks.0.layers.0.W"} <= set(errors)
            assert max(errors.values()) <= 1e-6, report


# ------------------------------------------------------------------------------- BatchNorm2d
def _batchnorm2d(rng, channels=3):
    layer = BatchNorm2d(channels)
    layer.params["log_gamma"][:] = rng.standard_normal(channels)
    layer.params["beta"][:] = rng.standard_normal(channels)
    return layer


def _per_channel(v):
    return np.asarray(v)[None, :, None, None]


def test_batchnorm2d_training_backward_through_the_batch_statistics(rng):
    """Training mode: every z depends on the whole batch (through the per-channel statistics
    over N, H, W), so check the VJP on a whole-batch loss L = sum(dz * z) + sum(dl * logdet)
    by central differences in every entry of x and every parameter."""
    layer = _batchnorm2d(rng)
    x = rng.standard_normal((3, 3, 2, 3)) * _per_channel([1.0, 3.0, 0.5]) \
        + _per_channel([0.0, -2.0, 4.0])
    dz, dlogdet = rng.standard_normal(x.shape), rng.standard_normal(3)
    errors, problems = gradcheck.vjp_errors(layer, x, rng)
    assert set(errors) == {"x"} | {name for name, _, _ in layer.parameters()}
    assert max(errors.values()) <= 1e-7 and not problems, errors
    z, logdet, cache = layer.forward(x)
    layer.zero_grad()
    dx = layer.backward(dz, dlogdet, cache)
    # the batch statistics do matter: the example-wise (eval-mode) formula would be wrong here
    layer.zero_grad()
    (xhat, sigma, _), shape = cache
    wrong = layer.backward(dz, dlogdet, ((xhat, sigma, False), shape))
    assert gradcheck.rel_error(wrong, dx) > 1e-2


def test_batchnorm2d_is_batchnorm_on_the_pixels(rng):
    """The same numbers as the vector BatchNorm on the (N H W, C) matrix of pixels, in both
    modes; the log-det of an image is the sum over its H W pixels."""
    images, vectors = _batchnorm2d(rng), BatchNorm(3)
    vectors.load_state_dict(images.state_dict())
    x = rng.standard_normal((4, 3, 2, 5)) * 2.0 + 1.0
    rows = x.transpose(0, 2, 3, 1).reshape(-1, 3)
    for mode in ("train", "eval"):
        getattr(images, mode)(), getattr(vectors, mode)()
        z, logdet, _ = images.forward(x)
        z_rows, logdet_rows, _ = vectors.forward(rows)
        np.testing.assert_allclose(z.transpose(0, 2, 3, 1).reshape(-1, 3), z_rows, atol=1e-13)
        np.testing.assert_allclose(logdet, 10 * logdet_rows[:4], atol=1e-12)
        np.testing.assert_allclose(images.buffers["running_var"],
                                   vectors.buffers["running_var"], atol=1e-13)


def test_batchnorm2d_modes_and_running_averages(rng):
    layer = _batchnorm2d(rng)
    x = rng.standard_normal((20, 3, 5, 5)) * 2.0 + 1.0
    z, logdet, _ = layer.forward(x)  # training: the batch's per-channel statistics
    xhat = (z - _per_channel(layer.params["beta"])) * np.exp(-_per_channel(
        layer.params["log_gamma"]))
    np.testing.assert_allclose(xhat.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(xhat.var(axis=(0, 2, 3)), 1, atol=1e-4)
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(layer.buffers["running_var"], 0.9 + 0.1 * x.var(axis=(0, 2, 3)))
    assert logdet.shape == (20,)
    layer.eval()
    before = layer.buffers["running_mean"].copy()
    z, logdet, _ = layer.forward(x)
    assert np.array_equal(layer.buffers["running_mean"], before)  # eval: no update
    x_back, logdet_back, _ = layer.inverse(z)
    assert np.abs(x_back - x).max() <= 1e-12
    assert np.abs(logdet + logdet_back).max() <= 1e-12


def test_batchnorm2d_keeps_float32(rng):
    layer = BatchNorm2d(2, dtype=np.float32)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        z, logdet, cache = layer.forward(x)
        x_back, logdet_inv, cache_inv = layer.inverse(z)
        dx = layer.backward(z, logdet, cache)
        dz = layer.inverse_backward(x_back, logdet_inv, cache_inv)
        arrays = [z, logdet, x_back, logdet_inv, dx, dz] + [g for _, _, g in layer.parameters()]
        assert all(a.dtype == np.float32 for a in arrays), mode


def test_batchnorm2d_rejects_bad_input_and_bad_state(rng):
    layer = BatchNorm2d(3)
    for method in (layer.forward, layer.inverse):
        with pytest.raises(ValueError, match=r"BatchNorm2d.*shape \(N, 3, H, W\).*\(2, 4, 2, 2\)"):
            method(np.zeros((2, 4, 2, 2)))
        with pytest.raises(ValueError, match=r"BatchNorm2d.*shape \(N, 3, H, W\)"):
            method(np.zeros((6, 3)))
        with pytest.raises(ValueError, match="BatchNorm2d.*finite"):
            method(np.full((1, 3, 2, 2), np.nan))
    state = layer.state_dict()
    state["running_var"] = np.array([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="running_var >= 0"):
        layer.load_state_dict(state)
    np.testing.assert_array_equal(layer.buffers["running_var"], 1.0)  # the load was undone


# ------------------------------------------------------------ bad input to every image layer
def _image_layers():
    from nflows_edu.bijectors import (ActNorm, ImageAffineCoupling, ImageSplineCoupling,
                                      Invertible1x1Conv, LUInvertible1x1Conv, Squeeze)
    from nflows_edu.nn import Conv2d
    rng = np.random.default_rng(0)
    return {
        "Conv2d": Conv2d(2, 3, rng=rng), "ConvNet": ConvNet((2, 3, 4), rng=rng),
        "ResNet": ResNet(2, 4, hidden=3, rng=rng), "ActNorm": ActNorm(2),
        "Invertible1x1Conv": Invertible1x1Conv(2, rng=rng),
        "LUInvertible1x1Conv": LUInvertible1x1Conv(2, rng=rng), "Squeeze": Squeeze(2),
        "ImageAffineCoupling": ImageAffineCoupling(2, hidden=(3,), rng=rng),
        "ImageSplineCoupling": ImageSplineCoupling(2, hidden=(3,), rng=rng),
        "BatchNorm2d": BatchNorm2d(2),
    }


@pytest.mark.parametrize("name", list(_image_layers()))
@pytest.mark.parametrize("bad, words", [
    (np.zeros((2, 2, 4)), r"shape \(N, 2, H, W\).*\(2, 2, 4\)"),          # rank 3
    (np.zeros((2, 8)), r"shape \(N, 2, H, W\)"),                         # rank 2 (vectors)
    (np.zeros((1, 2, 2, 2, 2)), r"shape \(N, 2, H, W\)"),                # rank 5
    (np.zeros((2, 3, 4, 4)), r"shape \(N, 2, H, W\).*\(2, 3, 4, 4\)"),    # 3 channels, not 2
    (np.full((1, 2, 4, 4), np.nan), "finite"),
    (np.zeros((0, 2, 4, 4)), "non-empty"),
])
def test_image_layers_reject_bad_input_saying_what_they_expected(name, bad, words):
    layer = _image_layers()[name]
    with pytest.raises(ValueError, match=f"{name}.*{words}"):
        layer.forward(bad)


def test_image_layers_name_their_structural_requirements():
    from nflows_edu.bijectors import ImageAffineCoupling, Squeeze
    with pytest.raises(ValueError, match="Squeeze.*even"):
        Squeeze(2).forward(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="ImageAffineCoupling.*channel mask needs at least 2"):
        ImageAffineCoupling(1, "channel")
    # a checkerboard splits any channel count, also one
    z, _, _ = ImageAffineCoupling(1, "checkerboard", hidden=(2,)).forward(np.ones((1, 1, 2, 2)))
    assert z.shape == (1, 1, 2, 2)
