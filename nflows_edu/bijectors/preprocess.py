r"""Preprocessing for discrete pixels: uniform dequantisation, scaling to (0, 1), logit.

A density model of integer pixels ``x`` in {0, ..., L-1}^D (L = 17 grey levels for the 8x8
digits) is trained on ``v = x + u``, ``u ~ U(0, 1)^D`` (``dequantize``). Any density ``p`` of
``v`` then gives the discrete model ``P(x) = int_{[0,1)^D} p(x + u) du``, and by Jensen
``log P(x) >= E_u log p(x + u)``: the mean NLL of dequantised data in nats, divided by
``D log 2``, bounds the bits per dimension of the discrete model (``datasets.bits_per_dim``)
(Theis, van den Oord, Bethge 2016, arXiv:1511.01844).

The flow then sees ``v / L`` in (0, 1) (``ScaleToUnit``) and its logit (``Logit``), which is
unbounded, as a standard normal base wants. Their log-dets are part of the flow's, so
``flow.log_prob(v)`` is the density of ``v`` itself, in the pixels' units.
"""
import numpy as np

from ..core import Bijector, check_array
from ..gradcheck import register


def dequantize(pixels, rng=None, levels=17):
    r"""v = x + u,  u ~ U(0, 1) elementwise: integer pixels in 0..levels-1 -> [0, levels).

    Raises ``ValueError`` for a pixel that is not an integer in 0..levels-1.
    """
    x = np.asarray(pixels)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"dequantize: expected a non-empty (N, D) array of pixels, got shape "
                         f"{x.shape}")
    if not (np.isfinite(x).all() and (x == np.round(x)).all()
            and x.min() >= 0 and x.max() <= levels - 1):
        bad = x[~(np.isfinite(x) & (x == np.round(x)) & (x >= 0) & (x <= levels - 1))]
        raise ValueError(f"dequantize: expected integer pixels in 0..{levels - 1}, got "
                         f"{bad.ravel()[:3].tolist()}")
    rng = np.random.default_rng() if rng is None else rng
    return x.astype(np.float64) + rng.random(x.shape)


class ScaleToUnit(Bijector):
    r"""Scale dequantised pixels from [0, L] to [0, 1].

    Forward:  y = v / L;   Inverse:  v = y * L
    Log-det:  forward  -D log L;   inverse  +D log L   (the same for every example)
    Backward: dv = dy / L;   Inverse backward: dy = dv * L     (no parameters)

    Shapes: v, y (N, D). Raises ``ValueError`` for a value outside [0, L] in forward (not a
    pixel dequantised from 0..L-1). Inverse takes any value: a sample of a flow may fall
    slightly outside [0, 1] (``Logit``'s inverse with alpha > 0 can).
    """

    def __init__(self, dim, levels=17):
        super().__init__()
        self.dim = int(dim)
        self.levels = int(levels)

    def forward(self, v):
        v = self._check(v)
        if v.min() < 0 or v.max() > self.levels:
            raise ValueError(f"ScaleToUnit: expected dequantised pixels in [0, {self.levels}], "
                             f"got values in [{v.min():.4g}, {v.max():.4g}]")
        y = v / self.levels
        return y, np.full(v.shape[0], -self.dim * np.log(self.levels), dtype=y.dtype), None

    def inverse(self, y):
        y = self._check(y)  # any value: a sample may fall just outside [0, 1]
        v = y * self.levels
        return v, np.full(y.shape[0], self.dim * np.log(self.levels), dtype=v.dtype), None

    def backward(self, dy, dlogdet, cache):
        return dy / self.levels

    def inverse_backward(self, dv, dlogdet, cache):
        return dv * self.levels

    def __repr__(self):
        return f"ScaleToUnit(dim={self.dim}, levels={self.levels})"


class Logit(Bijector):
    r"""RealNVP's logit transform of values in (0, 1), squeezed away from 0 and 1 first.

    Forward:  y = alpha + (1 - 2 alpha) x;   z = log y - log(1 - y)
    Inverse:  y = sigmoid(z) = 1 / (1 + exp(-z));   x = (y - alpha) / (1 - 2 alpha)
    Log-det:  forward  sum_j [log(1 - 2 alpha) - log y_j - log(1 - y_j)];  inverse: minus it
    Backward: dy = dz / (y (1 - y)) - dlogdet * (1 - 2 y) / (y (1 - y));
              dx = (1 - 2 alpha) dy
    Inverse backward (with y = sigmoid(z), so dy/dz = y (1 - y)):
              dz = dx * y (1 - y) / (1 - 2 alpha) + dlogdet * (1 - 2 y)

    ``alpha`` (RealNVP used 0.05) keeps the logit finite for x near 0 or 1; alpha = 0 is the
    plain logit. Shapes: x, z (N, D). No parameters. Raises ``ValueError`` for x outside
    (0, 1) in forward.

    References: Dinh, Sohl-Dickstein, Bengio (2016), arXiv:1605.08803, section 4.1.
    """

    def __init__(self, dim, alpha=0.05):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"Logit: expected 0 <= alpha < 0.5, got {alpha!r}")
        self.dim = int(dim)
        self.alpha = float(alpha)

    def forward(self, x):
        x = self._check(x)
        if x.min() <= 0 or x.max() >= 1:
            raise ValueError(f"Logit: expected values in the open interval (0, 1), got values "
                             f"in [{x.min():.4g}, {x.max():.4g}]")
        y = self.alpha + (1 - 2 * self.alpha) * x
        log_y, log_1my = np.log(y), np.log1p(-y)
        logdet = (np.log1p(-2 * self.alpha) - log_y - log_1my).sum(axis=1)
        return log_y - log_1my, logdet, y

    def inverse(self, z):
        z = self._check(z)
        y = 1 / (1 + np.exp(-z))
        x = (y - self.alpha) / (1 - 2 * self.alpha)
        # log y = -log(1 + e^-z), log(1 - y) = -log(1 + e^z): accurate for large |z|
        # log|dx/dz| = sum_j log y_j (1 - y_j) - log(1 - 2 alpha), with log y = -log(1 + e^-z)
        # and log(1 - y) = -log(1 + e^z) (accurate for large |z|, where y rounds to 0 or 1)
        logdet = -(np.logaddexp(0, -z) + np.logaddexp(0, z)
                   + np.log1p(-2 * self.alpha)).sum(axis=1)
        return x, logdet, y

    def backward(self, dz, dlogdet, cache):
        y = cache
        y1my = y * (1 - y)
        dy = (dz - dlogdet[:, None] * (1 - 2 * y)) / y1my
        return (1 - 2 * self.alpha) * dy

    def inverse_backward(self, dx, dlogdet, cache):
        y = cache
        return dx * (y * (1 - y)) / (1 - 2 * self.alpha) + dlogdet[:, None] * (1 - 2 * y)

    def __repr__(self):
        return f"Logit(dim={self.dim}, alpha={self.alpha})"


register("ScaleToUnit", lambda d, r: ScaleToUnit(d, levels=int(r.integers(2, 20))),
         inputs=lambda layer, n, r: r.uniform(0, layer.levels, (n, layer.dim)))
register("Logit", lambda d, r: Logit(d, alpha=float(r.choice([0.0, 0.05, 0.2]))),
         inputs=lambda layer, n, r: r.uniform(0.02, 0.98, (n, layer.dim)))
