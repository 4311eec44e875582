r"""Reshaping bijectors on images (N, C, H, W): a permutation of the pixels, so log-det 0."""
import numpy as np

from ..core import Bijector, check_images
from ..gradcheck import register


def squeeze(x):
    r"""Space to depth: every 2 x 2 block of pixels becomes 4 channels of one pixel.

        z[n, 4 c + 2 i + j, h, w] = x[n, c, 2 h + i, 2 w + j],   i, j in {0, 1}

    x (N, C, H, W) with H, W even -> z (N, 4 C, H / 2, W / 2). No checks (see ``Squeeze``).
    """
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)  # axes (n, c, h, i, w, j)
    return blocks.transpose(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(z):
    r"""Depth to space, the inverse of ``squeeze``:  (N, 4 C, H, W) -> (N, C, 2 H, 2 W)."""
    n, c4, h, w = z.shape
    blocks = z.reshape(n, c4 // 4, 2, 2, h, w)  # axes (n, c, i, j, h, w)
    return blocks.transpose(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, 2 * h, 2 * w)


class Squeeze(Bijector):
    r"""Squeeze (space to depth), RealNVP's and Glow's way of trading resolution for channels.

    Forward:  z[n, 4 c + 2 i + j, h, w] = x[n, c, 2 h + i, 2 w + j]    (``squeeze``)
    Inverse:  x = unsqueeze(z)
    Log-det:  0 in both directions (a permutation of the entries)
    Backward: dx = unsqueeze(dz)   (the VJP of a permutation is its inverse)
    Inverse backward: dz = squeeze(dx)

    Shapes: x (N, C, H, W) with H and W even; z (N, 4 C, H / 2, W / 2); logdet (N,).
    ``channels`` (C of the input), if given, is checked in both directions; without it any C
    is taken (and a multiple of 4 by ``inverse``). An odd H or W raises ``ValueError``: the
    2 x 2 blocks would not tile the image.

    References: Dinh, Sohl-Dickstein, Bengio (2016), arXiv:1605.08803, section 3.6;
    Kingma, Dhariwal (2018), arXiv:1807.03039.
    """

    def __init__(self, channels=None):
        super().__init__()
        self.channels = None if channels is None else int(channels)
        self.dim = None  # images: any H and W; see ``channels``

    def forward(self, x):
        x = check_images(x, "Squeeze", self.channels)
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"Squeeze: expected an even height and width (2 x 2 blocks), got "
                             f"shape {x.shape}")
        return squeeze(x), np.zeros(x.shape[0], dtype=x.dtype), None

    def inverse(self, z):
        channels = None if self.channels is None else 4 * self.channels
        z = check_images(z, "Squeeze.inverse", channels)
        if z.shape[1] % 4:
            raise ValueError(f"Squeeze.inverse: expected a multiple of 4 channels, shape "
                             f"(N, 4 C, H, W), got shape {z.shape}")
        return unsqueeze(z), np.zeros(z.shape[0], dtype=z.dtype), None

    def backward(self, dz, dlogdet, cache):
        return unsqueeze(dz)

    def inverse_backward(self, dx, dlogdet, cache):
        return squeeze(dx)

    def __repr__(self):
        return f"Squeeze(channels={self.channels})"


def _even_images(layer, n, rng):
    h, w = (2 * int(v) for v in rng.integers(1, 3, size=2))
    return rng.standard_normal((n, layer.channels, h, w))


# ``dim`` is the number of input channels
register("Squeeze", lambda d, r: Squeeze(d), inputs=_even_images)
