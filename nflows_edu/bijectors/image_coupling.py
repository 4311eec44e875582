r"""RealNVP's affine coupling on images (N, C, H, W), with checkerboard and channel masks.

The math is the vector ``AffineCoupling``'s (the same functions from ``coupling.py``), written
with a binary mask ``m`` of the image's shape instead of index sets (RealNVP, eq. 9):

    z = m * x + (1 - m) * (x * exp(s) + t),   (r, t_raw) = net(m * x)

so the kept half is ``m * x`` and the net sees only it.
"""
import numpy as np

from ..core import Bijector, check_images
from ..gradcheck import register
from ..nn import ConvNet
from .coupling import (affine_backward, affine_forward, affine_inverse,
                       affine_inverse_backward, soft_bound, soft_bound_backward)

MASKS = ("checkerboard", "channel")


def checkerboard_mask(channels, height, width, parity=0):
    """m[c, h, w] = 1 where (h + w + parity) is even, the same for every channel; (C, H, W)."""
    h, w = np.indices((height, width))
    board = ((h + w + parity) % 2 == 0).astype(np.int64)
    return np.broadcast_to(board, (channels, height, width)).copy()


def channel_mask(channels, height, width, parity=0):
    """m[c, h, w] = 1 for the first C // 2 channels (parity 0) or the others (parity 1)."""
    first = (np.arange(channels) < channels // 2).astype(np.int64)
    keep = first if parity == 0 else 1 - first
    return np.broadcast_to(keep[:, None, None], (channels, height, width)).copy()


class ImageAffineCoupling(Bijector):
    r"""Affine coupling on images with a checkerboard or channel-wise mask (RealNVP).

    Forward:  (r, t_raw) = net(m * x)  (2 C output channels, split in two);
              s = (1 - m) * s_max * tanh(r / s_max);   t = (1 - m) * t_raw
              z = x * exp(s) + t   (so z = x where m = 1: there s = t = 0)
    Inverse:  x = (z - t) * exp(-s),   with (r, t_raw) = net(m * z)  (m * z = m * x)
    Log-det:  forward  sum_{c,h,w} s[n, c, h, w];   inverse  minus that
    Backward: (dx_direct, ds, dt) = affine_backward(dz, x, s, dlogdet):
              dx_direct = dz * exp(s);  ds = dz * x * exp(s) + dlogdet;  dt = dz
              dr = (1 - m) * ds * (1 - (s / s_max)^2);   dt_raw = (1 - m) * dt
              dx = dx_direct + m * net.backward([dr, dt_raw])
    Inverse backward: (dz_direct, ds, dt) = affine_inverse_backward(dx, x, s, dlogdet):
              dz_direct = dx * exp(-s);  ds = -dx * x - dlogdet;  dt = -dz_direct
              dr, dt_raw as above;   dz = dz_direct + m * net.backward([dr, dt_raw])

    Masks: ``"checkerboard"`` keeps the pixels with h + w + parity even, in every channel;
    ``"channel"`` keeps the first C // 2 channels (parity 0) or the last C - C // 2 (parity 1).
    The mask is built at each call for the image's H and W. The net is ``ConvNet((C, *hidden,
    2 C), kernels, activation, zero_last=zero_init)``, so with ``zero_init`` the layer starts as
    the identity.

    Shapes: x, z, m, s, t (N, C, H, W) (m broadcast over N); logdet (N,).

    References: Dinh, Sohl-Dickstein, Bengio (2016), arXiv:1605.08803, sections 3.3-3.4.
    """

    def __init__(self, channels, mask="checkerboard", parity=0, hidden=(64, 64),
                 kernels=None, activation="relu", s_max=3.0, rng=None, dtype=np.float64,
                 zero_init=True):
        super().__init__()
        self.channels = int(channels)
        self.dim = None  # images: any H and W; see ``channels``
        if mask not in MASKS:
            raise ValueError(f"ImageAffineCoupling: expected mask in {MASKS}, got {mask!r}")
        if parity not in (0, 1):
            raise ValueError(f"ImageAffineCoupling: expected parity 0 or 1, got {parity!r}")
        if mask == "channel" and self.channels < 2:
            raise ValueError(f"ImageAffineCoupling: a channel mask needs at least 2 channels "
                             f"to split, got {self.channels}")
        if not (np.isfinite(s_max) and s_max > 0):
            raise ValueError(f"ImageAffineCoupling: expected a positive finite s_max, got "
                             f"{s_max!r}")
        self.mask_type, self.parity, self.s_max = mask, int(parity), float(s_max)
        hidden = tuple(hidden)
        kernels = (3,) * (len(hidden) + 1) if kernels is None else tuple(kernels)
        self.net = ConvNet((self.channels, *hidden, 2 * self.channels), kernels, activation,
                           zero_last=zero_init, rng=rng, dtype=dtype)

    def _check(self, x):
        return check_images(x, "ImageAffineCoupling", self.channels)

    def mask(self, height, width):
        """m (C, H, W) for an image of this height and width, in 0/1 of int64."""
        make = checkerboard_mask if self.mask_type == "checkerboard" else channel_mask
        return make(self.channels, height, width, self.parity)

    def _scale_shift(self, kept, m):
        """(s, t, net_cache) from the kept half ``m * x``; both are zero where m = 1."""
        out, net_cache = self.net._forward(kept)
        r, t_raw = np.split(out, 2, axis=1)
        return (1 - m) * soft_bound(r, self.s_max), (1 - m) * t_raw, net_cache

    def _net_backward(self, ds, dt, s, m, net_cache):
        dr = (1 - m) * soft_bound_backward(ds, s, self.s_max)
        dt_raw = (1 - m) * dt
        return m * self.net.backward(np.concatenate([dr, dt_raw], axis=1), net_cache)

    def forward(self, x):
        x = self._check(x)
        m = self.mask(*x.shape[2:]).astype(x.dtype)
        s, t, net_cache = self._scale_shift(m * x, m)
        z = affine_forward(x, s, t)
        return z, s.sum(axis=(1, 2, 3)), (x, s, m, net_cache)

    def inverse(self, z):
        z = self._check(z)
        m = self.mask(*z.shape[2:]).astype(z.dtype)
        s, t, net_cache = self._scale_shift(m * z, m)
        x = affine_inverse(z, s, t)
        return x, -s.sum(axis=(1, 2, 3)), (x, s, m, net_cache)

    def backward(self, dz, dlogdet, cache):
        x, s, m, net_cache = cache
        dx, ds, dt = affine_backward(dz, x, s, dlogdet[:, None, None, None])
        return dx + self._net_backward(ds, dt, s, m, net_cache)

    def inverse_backward(self, dx, dlogdet, cache):
        x, s, m, net_cache = cache
        dz, ds, dt = affine_inverse_backward(dx, x, s, dlogdet[:, None, None, None])
        return dz + self._net_backward(ds, dt, s, m, net_cache)

    def __repr__(self):
        return (f"ImageAffineCoupling(channels={self.channels}, mask={self.mask_type!r}, "
                f"parity={self.parity}, net={self.net!r})")


# ------------------------------------------------------------------ the gradcheck registry
# ``dim`` is the number of channels; names short enough for the check table's column (28); tanh nets (smooth, for central differences), small
# images and nets so the numerical Jacobian and parameter gradients stay cheap. The zero-
# initialised last convolution is moved off zero by the registry's default randomize.
def _small_images(layer, n, rng):
    h, w = (int(v) for v in rng.integers(2, 4, size=2))
    return rng.standard_normal((n, layer.channels, h, w))


register("ImageCoupling(checkerboard)",
         lambda d, r: ImageAffineCoupling(d, "checkerboard", int(r.integers(2)), hidden=(3,),
                                          activation="tanh", s_max=2.0, rng=r),
         inputs=_small_images)
register("ImageCoupling(channel)",
         lambda d, r: ImageAffineCoupling(d, "channel", int(r.integers(2)), hidden=(3,),
                                          kernels=(3, 1), activation="tanh", s_max=2.0, rng=r),
         inputs=_small_images)
