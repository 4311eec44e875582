r"""The multi-scale architecture of RealNVP and Glow: levels of image layers, with half of the
channels factored out after every level but the last.

After a level, half of the channels leave the flow: they are final latent variables, and the
next level works on the other half only, at a quarter of the cost per squeeze. The factored-out
parts still travel in ``z`` (concatenated, flattened), so the whole model is one bijector on
vectors (N, C H W) whose round trip is exact, and the base distribution is a standard normal
over all of ``z``.
"""
import numpy as np

from ..core import Bijector, Chain, check_array
from ..gradcheck import randomize_parameters, register
from ..nn import ResNet
from .glow import ActNorm, LUInvertible1x1Conv
from .image_coupling import GlowCoupling, ImageAffineCoupling, ImageSplineCoupling, Split
from .reshape import Squeeze


class MultiScale(Bijector):
    r"""Levels of image bijectors with half the channels factored out between levels.

    Forward, for x (N, D) with D = C H W, viewed as images h_0 (N, C, H, W):
        for l = 1 .. L:   h_l = level_l(h_{l-1})   (a ``Chain`` of image layers)
                          if l < L:  (h_l, y_l) = (h_l[:, :K_l], h_l[:, K_l:]),  K_l = C_l // 2
        z = concat(flat(y_1), ..., flat(y_{L-1}), flat(h_L))     (N, D)
        logdet = sum_l logdet_l
    Inverse:  split z back into y_1 .. y_{L-1}, h_L; for l = L .. 1:
              h_{l-1} = level_l^{-1}(concat(h_l, y_l) on channels)  (just h_L for l = L)
    Log-det:  the levels' (factoring out is a permutation of the entries: log-det 0)
    Backward: cut dz into dy_1 .. dy_{L-1}, dh_L; for l = L .. 1:
              dh_{l-1} = level_l.backward(concat(dh_l, dy_l), dlogdet)
    Inverse backward: dh_0 = dx as images; for l = 1 .. L:
              dh_l = level_l.inverse_backward(dh_{l-1}, dlogdet), cut into (dh_l, dy_l)

    With a ``Split`` as the last layer of a level, the factored-out y_l is Glow's noise under
    its learned prior; without one (RealNVP) it is the level's output as it is.

    Parameters
    ----------
    shape : (C, H, W), the shape of one image
    levels : sequence of Bijector, each mapping images to images (``Squeeze`` may change the
        shape; every level but the last must end with at least 2 channels)

    Shapes: x, z (N, C H W); logdet (N,). ``shapes[l]`` is level l's output shape (C_l, H_l,
    W_l), found at construction by passing one blank image through the levels.

    References: Dinh, Sohl-Dickstein, Bengio (2016), arXiv:1605.08803, section 3.6;
    Kingma, Dhariwal (2018), arXiv:1807.03039, figure 2.
    """

    def __init__(self, shape, levels):
        super().__init__()
        self.shape = tuple(int(v) for v in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"MultiScale: expected shape (C, H, W) of positive sizes, got "
                             f"{shape!r}")
        self.levels = list(levels)
        if not self.levels:
            raise ValueError("MultiScale: expected at least one level")
        self.dim = int(np.prod(self.shape))
        self.shapes, h = [], np.zeros((1, *self.shape))
        for k, level in enumerate(self.levels):
            h = level.forward(h)[0]
            self.shapes.append(h.shape[1:])
            if k < len(self.levels) - 1:
                if h.shape[1] < 2:
                    raise ValueError(f"MultiScale: level {k} ends with {h.shape[1]} channel; "
                                     f"factoring out half needs at least 2 (add a Squeeze)")
                h = h[:, :h.shape[1] // 2]

    @property
    def vjps(self):
        return Chain(self.levels).vjps

    def _sizes(self):
        """Sizes of y_1 .. y_{L-1}, h_L in z: (C_l - C_l // 2) H_l W_l, then C_L H_L W_L."""
        sizes = [(c - c // 2) * h * w for c, h, w in self.shapes[:-1]]
        return sizes + [int(np.prod(self.shapes[-1]))]

    def _cut(self, z):
        """z (N, D) -> [y_1, ..., y_{L-1}, h_L] as images of their shapes."""
        parts = np.split(z, np.cumsum(self._sizes())[:-1], axis=1)
        shapes = [(c - c // 2, h, w) for c, h, w in self.shapes[:-1]] + [self.shapes[-1]]
        return [p.reshape(len(z), *s) for p, s in zip(parts, shapes)]

    @staticmethod
    def _join(parts):
        """[y_1, ..., h_L] images -> z (N, D), each flattened, concatenated."""
        return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)

    def forward(self, x):
        x = check_array(x, "MultiScale", self.dim)
        h = x.reshape(len(x), *self.shape)
        logdet, caches, out = 0.0, [], []
        for k, level in enumerate(self.levels):
            h, ld, cache = level.forward(h)
            logdet, caches = logdet + ld, caches + [cache]
            if k < len(self.levels) - 1:
                keep = h.shape[1] // 2
                h, y = h[:, :keep], h[:, keep:]
                out.append(y)
        return self._join(out + [h]), logdet, caches

    def inverse(self, z):
        z = check_array(z, "MultiScale.inverse", self.dim)
        *ys, h = self._cut(z)
        logdet, caches = 0.0, [None] * len(self.levels)
        for k in reversed(range(len(self.levels))):
            if k < len(self.levels) - 1:
                h = np.concatenate([h, ys[k]], axis=1)
            h, ld, caches[k] = self.levels[k].inverse(h)
            logdet = logdet + ld
        return h.reshape(len(z), self.dim), logdet, caches

    def backward(self, dz, dlogdet, caches):
        *dys, dh = self._cut(dz)
        for k in reversed(range(len(self.levels))):
            if k < len(self.levels) - 1:
                dh = np.concatenate([dh, dys[k]], axis=1)
            dh = self.levels[k].backward(dh, dlogdet, caches[k])
        return dh.reshape(len(dz), self.dim)

    def inverse_backward(self, dx, dlogdet, caches):
        dh, out = dx.reshape(len(dx), *self.shape), []
        for k, level in enumerate(self.levels):
            dh = level.inverse_backward(dh, dlogdet, caches[k])
            if k < len(self.levels) - 1:
                keep = dh.shape[1] // 2
                dh, dy = dh[:, :keep], dh[:, keep:]
                out.append(dy)
        return self._join(out + [dh])

    def data_init(self, x):
        x = check_array(x, "MultiScale.data_init", self.dim)
        h, out = x.reshape(len(x), *self.shape), []
        for k, level in enumerate(self.levels):
            h = level.data_init(h)
            if k < len(self.levels) - 1:
                keep = h.shape[1] // 2
                h, y = h[:, :keep], h[:, keep:]
                out.append(y)
        return self._join(out + [h])

    def __repr__(self):
        inner = ",\n  ".join(repr(level) for level in self.levels)
        return f"MultiScale(shape={self.shape}, levels=[\n  {inner}\n])"


# ------------------------------------------------------------------ the builders of the models
COUPLINGS = ("affine", "spline")


def glow_levels(shape, levels=2, depth=8, hidden=64, activation="relu", rng=None,
                dtype=np.float64, coupling="affine", n_bins=8, bound=4.0):
    r"""Glow's levels (Kingma, Dhariwal 2018, figure 2): each is

        Squeeze, then ``depth`` steps of [ActNorm, LU 1x1 convolution, coupling],
        then (all but the last level) Split, whose second half ``MultiScale`` factors out.

    The coupling is ``GlowCoupling`` (``coupling="affine"``) or, for neural spline flows'
    Glow-like image model, ``ImageSplineCoupling`` with a channel mask and Glow's conditioner
    (3x3, 1x1, 3x3 convolutions of ``hidden`` channels), ``n_bins`` bins on
    [-``bound``, ``bound``] (``coupling="spline"``; ``n_bins`` and ``bound`` are unused
    otherwise).
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"glow_levels: expected coupling in {COUPLINGS}, got {coupling!r}")

    def make_coupling(channels):
        if coupling == "affine":
            return GlowCoupling(channels, hidden, activation, rng, dtype)
        return ImageSplineCoupling(channels, "channel", hidden=(hidden, hidden),
                                   kernels=(3, 1, 3), activation=activation, n_bins=n_bins,
                                   bound=bound, rng=rng, dtype=dtype)

    c, h, w = shape
    out = []
    for k in range(levels):
        layers = [Squeeze(c)]
        c, h, w = 4 * c, h // 2, w // 2
        for _ in range(depth):
            layers += [ActNorm(c, dtype), LUInvertible1x1Conv(c, rng, dtype), make_coupling(c)]
        if k < levels - 1:
            layers.append(Split(c, rng=rng, dtype=dtype))
        out.append(Chain(layers))
        c = c // 2
    return out


def realnvp_levels(shape, scales=2, hidden=32, n_blocks=2, activation="relu", s_max=3.0,
                   net="convnet", rng=None, dtype=np.float64):
    r"""RealNVP's multi-scale levels (Dinh et al. 2016, section 3.6): each scale but the last is

        3 checkerboard couplings (alternating parity), Squeeze, 3 channel couplings
        (alternating), after which ``MultiScale`` factors out half of the channels;

    the last scale is 4 checkerboard couplings. Each coupling's net is a ``ConvNet`` of
    ``n_blocks + 1`` 3x3 convolutions of ``hidden`` channels (``net="convnet"``) or RealNVP's
    small ResNet (``net="resnet"``, ``nn.ResNet`` with ``n_blocks`` residual blocks).
    """
    c, _, _ = shape
    out = []

    def coupling(channels, mask, parity):
        if net == "resnet":
            resnet = ResNet(channels, 2 * channels, hidden, n_blocks, activation,
                            zero_last=True, rng=rng, dtype=dtype)
            return ImageAffineCoupling(channels, mask, parity, s_max=s_max, net=resnet)
        return ImageAffineCoupling(channels, mask, parity, hidden=(hidden,) * n_blocks,
                                   activation=activation, s_max=s_max, rng=rng, dtype=dtype)

    for k in range(scales):
        if k == scales - 1:
            out.append(Chain([coupling(c, "checkerboard", j % 2) for j in range(4)]))
            break
        layers = [coupling(c, "checkerboard", j % 2) for j in range(3)]
        layers.append(Squeeze(c))
        c = 4 * c
        layers += [coupling(c, "channel", j % 2) for j in range(3)]
        out.append(Chain(layers))
        c = c // 2
    return out


# ------------------------------------------------------------------ the gradcheck registry
# Whole models on 1x4x4 (dim even) or 2x4x4 (dim odd) images with tiny tanh nets. Every layer in
# them is registered and checked entry by entry on its own; here each parameter array is spot-
# checked on 4 random entries (``entries``), which keeps a draw near a second. Parameters move
# by a fifth of the usual scale: the moves compound over a dozen layers.
def _shape(d):
    return (1 + d % 2, 4, 4)


def _randomize_model(layer, rng, scale):
    return randomize_parameters(layer, rng, 0.2 * scale)


register("MultiScale(Glow)",
         lambda d, r: MultiScale(_shape(d), glow_levels(_shape(d), 2, 1, 2, "tanh", r)),
         randomize=_randomize_model, entries=4)
register("MultiScale(Glow,spline)",
         lambda d, r: MultiScale(_shape(d), glow_levels(_shape(d), 2, 1, 2, "tanh", r,
                                                        coupling="spline", n_bins=3,
                                                        bound=2.0)),
         randomize=_randomize_model, entries=4)
register("MultiScale(RealNVP)",
         lambda d, r: MultiScale(_shape(d), realnvp_levels(_shape(d), 2, 2, 1, "tanh", 2.0,
                                                           rng=r)),
         randomize=_randomize_model, entries=4)
