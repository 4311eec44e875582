r"""RealNVP's affine coupling on images (N, C, H, W), with checkerboard and channel masks.

The math is the vector ``AffineCoupling``'s (the same functions, from ``affine.py``), written
with a binary mask ``m`` of the image's shape instead of index sets (RealNVP, eq. 9):

    z = m * x + (1 - m) * (x * exp(s) + t),   (r, t_raw) = net(m * x)

so the kept half is ``m * x`` and the net sees only it. Glow's coupling is the same map with
the log-scale ``s = log sigmoid(r + 2)`` (``GlowCoupling``), and Glow's factor-out with its
learned prior is the same map again, with a single convolution as the net (``Split``).
"""
import numpy as np

from ..core import Bijector, check_finite, check_images
from ..gradcheck import randomize_parameters, register
from ..nn import ConvNet, ResNet
from .affine import (affine_backward, affine_forward, affine_inverse, affine_inverse_backward,
                     soft_bound, soft_bound_backward)
from .spline import (DEFAULT_MIN, _randomize_coupling, check_spline_options, rq_backward,
                     rq_forward, rq_inverse, rq_inverse_backward)

MASKS = ("checkerboard", "channel")
SCALES = ("tanh", "sigmoid")


def sigmoid_scale(r):
    r"""s = log sigmoid(r + 2), Glow's log-scale: s < 0 (the scale is in (0, 1)), s(0) = -0.127.

    Written as -log(1 + exp(-(r + 2))) = -logaddexp(0, -(r + 2)), finite for every r.
    """
    return -np.logaddexp(0.0, -(r + 2.0))


def sigmoid_scale_backward(ds, s):
    r"""dr = ds * (1 - sigmoid(r + 2)) = ds * (1 - exp(s)): the VJP of ``sigmoid_scale``."""
    return ds * (1.0 - np.exp(s))


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


def conv_conditioner(channels, out_channels, hidden, kernels, activation, zero_init, rng,
                     dtype):
    """The image couplings' default net: ``ConvNet((C, *hidden, C_out), kernels, activation,
    zero_last=zero_init)``, every kernel 3x3 unless ``kernels`` says otherwise."""
    hidden = tuple(hidden)
    kernels = (3,) * (len(hidden) + 1) if kernels is None else tuple(kernels)
    return ConvNet((channels, *hidden, out_channels), kernels, activation, zero_last=zero_init,
                   rng=rng, dtype=dtype)


class ImageAffineCoupling(Bijector):
    r"""Affine coupling on images with a checkerboard or channel-wise mask (RealNVP).

    Forward:  (r, t_raw) = net(m * x)  (2 C output channels, split in two);
              s = (1 - m) * s_max * tanh(r / s_max);   t = (1 - m) * t_raw
              (with ``scale="sigmoid"``, Glow's: s = (1 - m) * log sigmoid(r + 2))
              z = x * exp(s) + t   (so z = x where m = 1: there s = t = 0)
    Inverse:  x = (z - t) * exp(-s),   with (r, t_raw) = net(m * z)  (m * z = m * x)
    Log-det:  forward  sum_{c,h,w} s[n, c, h, w];   inverse  minus that
    Backward: (dx_direct, ds, dt) = affine_backward(dz, x, s, dlogdet):
              dx_direct = dz * exp(s);  ds = dz * x * exp(s) + dlogdet;  dt = dz
              dr = (1 - m) * ds * (1 - (s / s_max)^2);   dt_raw = (1 - m) * dt
              (with ``scale="sigmoid"``: dr = (1 - m) * ds * (1 - exp(s)))
              dx = dx_direct + m * net.backward([dr, dt_raw])
    Inverse backward: (dz_direct, ds, dt) = affine_inverse_backward(dx, x, s, dlogdet):
              dz_direct = dx * exp(-s);  ds = -dx * x - dlogdet;  dt = -dz_direct
              dr, dt_raw as above;   dz = dz_direct + m * net.backward([dr, dt_raw])

    Masks: ``"checkerboard"`` keeps the pixels with h + w + parity even, in every channel;
    ``"channel"`` keeps the first C // 2 channels (parity 0) or the last C - C // 2 (parity 1).
    The mask is built at each call for the image's H and W. The net is ``ConvNet((C, *hidden,
    2 C), kernels, activation, zero_last=zero_init)``, so with ``zero_init`` the layer starts as
    the identity; ``net=`` takes another conditioner from C to 2 C channels instead (RealNVP's
    ``nn.ResNet``), any module with ``_forward(x) -> (out, cache)`` and ``backward``.

    Shapes: x, z, m, s, t (N, C, H, W) (m broadcast over N); logdet (N,).

    References: Dinh, Sohl-Dickstein, Bengio (2016), arXiv:1605.08803, sections 3.3-3.4.
    """

    def __init__(self, channels, mask="checkerboard", parity=0, hidden=(64, 64),
                 kernels=None, activation="relu", s_max=3.0, rng=None, dtype=np.float64,
                 zero_init=True, scale="tanh", net=None):
        super().__init__()
        self.channels = int(channels)
        self.dim = None  # images: any H and W; see ``channels``
        name = type(self).__name__  # errors name the subclass a user built
        if mask not in MASKS:
            raise ValueError(f"{name}: expected mask in {MASKS}, got {mask!r}")
        if parity not in (0, 1):
            raise ValueError(f"{name}: expected parity 0 or 1, got {parity!r}")
        if mask == "channel" and self.channels < 2:
            raise ValueError(f"{name}: a channel mask needs at least 2 channels to split, got "
                             f"{self.channels}")
        if not (np.isfinite(s_max) and s_max > 0):
            raise ValueError(f"{name}: expected a positive finite s_max, got {s_max!r}")
        if scale not in SCALES:
            raise ValueError(f"{name}: expected scale in {SCALES}, got {scale!r}")
        self.mask_type, self.parity, self.s_max = mask, int(parity), float(s_max)
        self.scale = scale
        if net is None:
            net = conv_conditioner(self.channels, 2 * self.channels, hidden, kernels,
                                   activation, zero_init, rng, dtype)
        self.net = net

    def _check(self, x):
        return check_images(x, type(self).__name__, self.channels)

    def mask(self, height, width):
        """m (C, H, W) for an image of this height and width, in 0/1 of int64."""
        make = checkerboard_mask if self.mask_type == "checkerboard" else channel_mask
        return make(self.channels, height, width, self.parity)

    def _scale_shift(self, kept, m):
        """(s, t, net_cache) from the kept half ``m * x``; both are zero where m = 1."""
        out, net_cache = self.net._forward(kept)
        r, t_raw = np.split(out, 2, axis=1)
        s = soft_bound(r, self.s_max) if self.scale == "tanh" else sigmoid_scale(r)
        return (1 - m) * s, (1 - m) * t_raw, net_cache

    def _net_backward(self, ds, dt, s, m, net_cache):
        if self.scale == "tanh":
            dr = (1 - m) * soft_bound_backward(ds, s, self.s_max)
        else:
            dr = (1 - m) * sigmoid_scale_backward(ds, s)
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
        return (f"{type(self).__name__}(channels={self.channels}, mask={self.mask_type!r}, "
                f"parity={self.parity}, scale={self.scale!r}, net={self.net!r})")


class GlowCoupling(ImageAffineCoupling):
    r"""Glow's affine coupling: a channel mask, Glow's conditioner and scale sigmoid(h + 2).

    Forward:  (r, t_raw) = net(m * x),  net = 3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv (zero
              initialised);   s = (1 - m) * log sigmoid(r + 2);   t = (1 - m) * t_raw
              z = x * exp(s) + t
    Everything else is ``ImageAffineCoupling``'s (same functions, ``scale="sigmoid"``):
    inverse x = (z - t) * exp(-s); log-det sum s; the backward passes with
    dr = (1 - m) * ds * (1 - exp(s)).

    The scale sigmoid(r + 2) lies in (0, 1), so a coupling can only shrink, and log-det <= 0;
    the net starts at r = 0, scale 0.88, which the following ActNorm absorbs. Glow adds the
    shift before scaling, z = (x + t') sigmoid(r + 2); with t = t' sigmoid(r + 2) the two
    are the same family of maps. The mask keeps the first C // 2 channels; the 1x1
    convolution before each coupling mixes the channels, so no alternation is needed.

    Shapes: x, z (N, C, H, W), C >= 2; logdet (N,).

    References: Kingma, Dhariwal (2018), arXiv:1807.03039, section 3.3 and its code
    (``scale = sigmoid(h + 2.)``).
    """

    def __init__(self, channels, hidden=64, activation="relu", rng=None, dtype=np.float64,
                 parity=0):
        super().__init__(channels, "channel", parity, hidden=(hidden, hidden), kernels=(3, 1, 3),
                         activation=activation, rng=rng, dtype=dtype, zero_init=True,
                         scale="sigmoid")


class Split(ImageAffineCoupling):
    r"""Glow's factor-out with a learned prior, as a bijector: the second half of the channels
    is mapped to standard normal noise given the first half.

    Glow models the half x_b that leaves the flow at the end of a level (channels C // 2 on)
    by a Gaussian whose mean and log standard deviation come from the half x_a that goes on:
    p(x_b | x_a) = N(mu(x_a), exp(log_sigma(x_a))^2), (mu, log_sigma) = conv3x3(x_a). That is
    the same as saying that z_b = (x_b - mu) exp(-log_sigma) is standard normal, with log-det
    -sum log_sigma: an affine coupling whose net is one convolution. So:

    Forward:  (r, t_raw) = conv3x3(m * x)  (zero initialised, so mu = 0, sigma = 1 at first)
              s = (1 - m) * s_max * tanh(r / s_max)   (s = -log_sigma);   t = (1 - m) * t_raw
              (t = -mu exp(-log_sigma));   z = x * exp(s) + t
    Inverse, log-det, backward, inverse backward: ``ImageAffineCoupling``'s.

    ``MultiScale`` then takes channels C // 2 on out of the flow (they are z_b, already
    standard normal under the base distribution) and passes the first C // 2 on.

    Shapes: x, z (N, C, H, W), C >= 2; logdet (N,).

    References: Kingma, Dhariwal (2018), arXiv:1807.03039, and its code (``split2d`` with a
    learned prior); Dinh, Sohl-Dickstein, Bengio (2016), arXiv:1605.08803, section 3.6
    (factoring out).
    """

    def __init__(self, channels, s_max=3.0, rng=None, dtype=np.float64):
        super().__init__(channels, "channel", 0, hidden=(), kernels=(3,), s_max=s_max, rng=rng,
                         dtype=dtype, zero_init=True)


class ImageSplineCoupling(ImageAffineCoupling):
    r"""Rational-quadratic spline coupling on images (neural spline flows' coupling with
    ``ImageAffineCoupling``'s masks and convolutional conditioner).

    With the mask m (C, H, W) and b = (m == 0) its transformed elements, n_b of them per
    example (for the channel mask, the last C_b = C - C // 2 channels: n_b = C_b H W):

    Forward:  theta = net(m * x)   (N, (3K - 1) C, H, W), viewed as (N, 3K - 1, C, H, W);
              theta_b = theta[:, :, b] moved to (N, n_b, 3K - 1):
              uw = theta_b[..., :K],  uh = theta_b[..., K:2K],  ud = theta_b[..., 2K:]
              z[:, b] = g(x[:, b]; uw, uh, ud)  (``rq_forward`` on (N, n_b));  z = x where m = 1
    Inverse:  x[:, b] = g^{-1}(z[:, b]; theta(m * z))  (``rq_inverse``; m * z = m * x)
    Log-det:  forward  sum_{j in b} log g'(x_j);   inverse  minus that
    Backward: (dx_b, duw, duh, dud) = rq_backward(dz[:, b], dlogdet);
              dtheta = 0 except dtheta[:, :, b] = [duw, duh, dud] moved back to (N, 3K - 1, n_b)
              dx = dz with dx[:, b] = dx_b,  plus  m * net.backward(dtheta)
    Inverse backward: the same with ``rq_inverse_backward`` and dx, dz swapped.

    Each spline has ``n_bins`` = K bins on [-B, B] (``bound``) and is the identity outside
    (``bijectors.spline``). As in ``ImageAffineCoupling`` the net gives parameters for every
    element, the kept ones included, and the mask picks the transformed ones: one code path
    for both masks, at the price of unused output channels (half of them for the channel
    mask). With ``zero_init`` the last convolution starts at 0, so theta = 0 and every spline
    is the identity. ``net=`` takes another conditioner from C to (3K - 1) C channels.

    Shapes: x, z (N, C, H, W); m, b (C, H, W); x[:, b] (N, n_b); uw, uh (N, n_b, K),
    ud (N, n_b, K - 1); logdet (N,).

    References: Durkan, Bekasov, Murray, Papamakarios (2019), arXiv:1906.04032, sections 3.1
    and 3.2 (their Glow-style image experiments, section 5.3); Dinh, Sohl-Dickstein, Bengio
    (2016), arXiv:1605.08803, section 3.4 (the masks).
    """

    def __init__(self, channels, mask="checkerboard", parity=0, hidden=(64, 64), kernels=None,
                 activation="relu", n_bins=8, bound=3.0, min_width=DEFAULT_MIN,
                 min_height=DEFAULT_MIN, min_derivative=DEFAULT_MIN, rng=None,
                 dtype=np.float64, zero_init=True, net=None):
        check_spline_options(n_bins, bound, min_width, min_height, min_derivative,
                             "ImageSplineCoupling")
        if net is None:
            net = conv_conditioner(int(channels), (3 * n_bins - 1) * int(channels), hidden,
                                   kernels, activation, zero_init, rng, dtype)
        super().__init__(channels, mask, parity, rng=rng, dtype=dtype, net=net)
        self.n_bins = int(n_bins)
        self.options = (float(bound), float(min_width), float(min_height), float(min_derivative))

    def _spline_params(self, kept, b):
        """(uw, uh, ud, net_cache) for the transformed elements b, from the kept half m * x."""
        out, net_cache = self.net._forward(kept)
        check_finite(out, "ImageSplineCoupling: expected finite spline parameters from the net")
        K = self.n_bins
        theta = out.reshape(len(out), 3 * K - 1, self.channels, *out.shape[2:])
        theta_b = theta[:, :, b].transpose(0, 2, 1)  # (N, n_b, 3K - 1)
        return theta_b[..., :K], theta_b[..., K:2 * K], theta_b[..., 2 * K:], net_cache

    def _net_backward(self, duw, duh, dud, m, net_cache):
        """m * net.backward(dtheta), dtheta zero on the kept elements (their outputs are unused)."""
        dtheta_b = np.concatenate([duw, duh, dud], axis=-1).transpose(0, 2, 1)
        dtheta = np.zeros((len(dtheta_b), 3 * self.n_bins - 1, *m.shape), dtype=dtheta_b.dtype)
        dtheta[:, :, m == 0] = dtheta_b
        return m * self.net.backward(dtheta.reshape(len(dtheta), -1, *m.shape[1:]), net_cache)

    @staticmethod
    def _replace(a, b, part):
        """A copy of images ``a`` with the elements b (C, H, W) set to ``part`` (N, n_b)."""
        out = a.copy()
        out[:, b] = part
        return out

    def forward(self, x):
        x = self._check(x)
        m = self.mask(*x.shape[2:]).astype(x.dtype)
        b = m == 0
        uw, uh, ud, net_cache = self._spline_params(m * x, b)
        z_b, logdet, spline_cache = rq_forward(x[:, b], uw, uh, ud, *self.options)
        return self._replace(x, b, z_b), logdet.sum(axis=1), (spline_cache, m, net_cache)

    def inverse(self, z):
        z = self._check(z)
        m = self.mask(*z.shape[2:]).astype(z.dtype)
        b = m == 0
        uw, uh, ud, net_cache = self._spline_params(m * z, b)
        x_b, logdet, spline_cache = rq_inverse(z[:, b], uw, uh, ud, *self.options)
        return self._replace(z, b, x_b), logdet.sum(axis=1), (spline_cache, m, net_cache)

    def backward(self, dz, dlogdet, cache):
        spline_cache, m, net_cache = cache
        b = m == 0
        dz_b = dz[:, b]
        dx_b, duw, duh, dud = rq_backward(dz_b, np.broadcast_to(dlogdet[:, None], dz_b.shape),
                                          spline_cache)
        return self._replace(dz, b, dx_b) + self._net_backward(duw, duh, dud, m, net_cache)

    def inverse_backward(self, dx, dlogdet, cache):
        spline_cache, m, net_cache = cache
        b = m == 0
        dx_b = dx[:, b]
        dz_b, duw, duh, dud = rq_inverse_backward(
            dx_b, np.broadcast_to(dlogdet[:, None], dx_b.shape), spline_cache)
        return self._replace(dx, b, dz_b) + self._net_backward(duw, duh, dud, m, net_cache)

    def __repr__(self):
        return (f"ImageSplineCoupling(channels={self.channels}, mask={self.mask_type!r}, "
                f"parity={self.parity}, n_bins={self.n_bins}, bound={self.options[0]}, "
                f"net={self.net!r})")


# ------------------------------------------------------------------ the gradcheck registry
# ``dim`` is the number of channels; names short enough for the check table's column (28); tanh nets (smooth, for central differences), small
# images and nets so the numerical Jacobian and parameter gradients stay cheap. The zero-
# initialised last convolution is moved off zero by the registry's default randomize.
def _small_images(layer, n, rng):
    h, w = (int(v) for v in rng.integers(2, 4, size=2))
    return rng.standard_normal((n, layer.channels, h, w))


# Up to 8 channels (the registry's default is 12): an example then has up to 8 * 3 * 3 = 72
# entries, the log-det check 144 evaluations of the convolutional net per direction and a
# slogdet of 72 x 72 Jacobians, whose error grows with their size (at 12 channels, with full
# moves, the sigmoid-scaled coupling's log-det error reached 1.2e-7 in 3 draws, over the 1e-7
# bar).
_MAX_CHANNELS = 8


def _randomize_half(layer, rng, scale):
    """Half the usual moves: a scale sigmoid(r + 2) far below 1 makes the Jacobian nearly
    singular, and its slogdet then magnifies the central differences' round-off (with full
    moves, at 100 draws of up to 64 examples, the sigmoid-scaled coupling's log-det error
    reached 1.3e-6; with half, 2.7e-9)."""
    return randomize_parameters(layer, rng, 0.5 * scale)


register("ImageCoupling(checkerboard)",
         lambda d, r: ImageAffineCoupling(d, "checkerboard", int(r.integers(2)), hidden=(3,),
                                          activation="tanh", s_max=2.0, rng=r),
         inputs=_small_images, max_dim=_MAX_CHANNELS)
register("ImageCoupling(sigmoid)",
         lambda d, r: ImageAffineCoupling(d, "checkerboard", int(r.integers(2)), hidden=(3,),
                                          activation="tanh", scale="sigmoid", rng=r),
         inputs=_small_images, randomize=_randomize_half, max_dim=_MAX_CHANNELS)
register("ImageCoupling(channel)",
         lambda d, r: ImageAffineCoupling(d, "channel", int(r.integers(2)), hidden=(3,),
                                          kernels=(3, 1), activation="tanh", s_max=2.0, rng=r),
         inputs=_small_images, max_dim=_MAX_CHANNELS)


def _resnet_coupling(d, r):
    net = ResNet(d, 2 * d, hidden=3, n_blocks=1, activation="tanh", rng=r)
    return ImageAffineCoupling(d, "checkerboard", int(r.integers(2)), s_max=2.0, net=net)


register("ImageCoupling(resnet)", _resnet_coupling, inputs=_small_images,
         max_dim=_MAX_CHANNELS)
register("GlowCoupling", lambda d, r: GlowCoupling(d, hidden=3, activation="tanh", rng=r),
         inputs=_small_images, randomize=_randomize_half, max_dim=_MAX_CHANNELS)
register("Split", lambda d, r: Split(d, s_max=2.0, rng=r), inputs=_small_images,
         max_dim=_MAX_CHANNELS)


def _spline_images(layer, n, rng):
    """Small images with entries inside [-B, B] and in both tails (|x| > B for about one in
    six), as ``spline._spline_inputs``."""
    return 0.7 * layer.options[0] * _small_images(layer, n, rng)


# SplineCoupling's quarter-scale randomize: the net's outputs are K-way softmax logits, and a
# larger move gives bins so steep beside so flat ones that the central differences lose
# their accuracy (see ``spline._randomize_coupling``). The conditioner's last convolution
# has (3K - 1) C output channels, thousands of weights: 48 random entries of each parameter
# array are compared (``entries``), which kept a draw under a second instead of up to 15 s.
# Minimum bin widths, heights and derivatives of 0.02 (the default is 1e-3): at the default,
# 2 of 100 draws of the checkerboard version failed the log-det bar (1.8e-5 and 4.0e-7)
# in `nflows-edu check --draws 100`. Replayed, the first one's error at the worst example fell
# as eps^2 from eps = 1e-4 to 1e-5 (4.4e-6, 4.4e-8) and stopped falling at 1e-6 (4.8e-7):
# round-off, relative to Jacobian entries of slope ~1e-3 in the flattest bins, among 48
# features whose slogdet adds up the entries' relative errors. The code path of the minimum
# sizes is the same at 0.02; the spline's own tests take them to their defaults.
_SPLINE_MIN = dict(min_width=0.02, min_height=0.02, min_derivative=0.02)
register("ImageSpline(checkerboard)",
         lambda d, r: ImageSplineCoupling(d, "checkerboard", int(r.integers(2)), hidden=(3,),
                                          activation="tanh", n_bins=int(r.integers(2, 6)),
                                          bound=2.0, rng=r, **_SPLINE_MIN),
         inputs=_spline_images, randomize=_randomize_coupling, max_dim=_MAX_CHANNELS,
         entries=48)
register("ImageSpline(channel)",
         lambda d, r: ImageSplineCoupling(d, "channel", int(r.integers(2)), hidden=(3,),
                                          kernels=(3, 1), activation="tanh",
                                          n_bins=int(r.integers(2, 6)), bound=2.0, rng=r,
                                          **_SPLINE_MIN),
         inputs=_spline_images, randomize=_randomize_coupling, max_dim=_MAX_CHANNELS,
         entries=48)
