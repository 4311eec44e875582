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
