r"""Glow's per-step layers on images (N, C, H, W): ActNorm and the invertible 1x1 convolution.

Both act on the channels of every pixel alike: ActNorm by an affine map per channel, the 1x1
convolution by one C x C matrix applied at every pixel. The Jacobian of the whole image is
then block diagonal with H*W equal blocks, so the log-determinant is H*W times the log-
determinant of one block.

References
----------
Kingma, Dhariwal (2018), "Glow: Generative flow with invertible 1x1 convolutions",
arXiv:1807.03039.
"""
import numpy as np

from ..core import Bijector, check_images
from ..gradcheck import randomize_parameters, register


def _per_channel(v):
    """(C,) -> (1, C, 1, 1), to broadcast a per-channel vector over an image batch."""
    return v[None, :, None, None]


class ActNorm(Bijector):
    r"""Activation normalisation: an affine map per channel, initialised from data.

    Forward:  z[n, c, h, w] = x[n, c, h, w] * exp(log_s[c]) + b[c]
    Inverse:  x = (z - b) * exp(-log_s)
    Log-det:  forward  H * W * sum_c log_s[c]  (= H W sum_c log|s_c|, s = exp(log_s) > 0),
              the same for every example;  inverse  minus that
    Backward: dx = dz * exp(log_s);   db = sum_{n,h,w} dz
              dlog_s = sum_{n,h,w} dz * x * exp(log_s) + H * W * sum_n dlogdet
    Inverse backward: dz = dx * exp(-log_s);   db = -sum_{n,h,w} dz
              dlog_s = -sum_{n,h,w} dx * x - H * W * sum_n dlogdet

    Data-dependent initialisation: ``initialize(x)`` sets, per channel, with m and sd the
    mean and standard deviation of x[:, c] over (n, h, w),
        log_s = -log(sd + 1e-6),   b = -m * exp(log_s)
    so that z = (x - m) / (sd + 1e-6) has zero mean and unit variance per channel on that
    batch. It also sets the buffer ``initialized`` to 1; the buffer is saved and loaded with the
    model, so a loaded model keeps its trained parameters (``initialize`` refuses to run again
    unless ``force=True``). Nothing happens by itself in ``forward``: ``Flow.data_init`` (which
    ``train.fit`` calls before the first step, as Glow does) runs a batch through the flow and
    calls ``initialize`` with the activations that reach this layer.

    Shapes: x, z (N, C, H, W); logdet (N,). Parameters ``log_s``, ``b`` (C,); buffer
    ``initialized`` (int64, shape ()). A log-scale rather than Glow's s keeps the scale
    positive, so the layer is invertible whatever the optimizer does.

    References: Kingma, Dhariwal (2018), arXiv:1807.03039, section 3.1.
    """

    def __init__(self, channels, dtype=np.float64):
        super().__init__()
        self.channels = int(channels)
        self.dim = None  # images: any H and W; see ``channels``
        self.add_param("log_s", np.zeros(self.channels, dtype=dtype))
        self.add_param("b", np.zeros(self.channels, dtype=dtype))
        self.buffers["initialized"] = np.zeros((), dtype=np.int64)

    def _check(self, x):
        return check_images(x, "ActNorm", self.channels)

    def initialize(self, x, force=False):
        r"""Set ``log_s`` and ``b`` from the batch ``x`` (N, C, H, W) so that ``forward(x)``
        has zero mean and unit variance per channel; mark the layer as initialised.

        Does nothing (returns False) if the layer is initialised already (a trained or loaded
        model), unless ``force=True``; returns True when it initialised.
        """
        x = self._check(x)
        if self.buffers["initialized"] and not force:
            return False
        m = x.mean(axis=(0, 2, 3))
        sd = x.std(axis=(0, 2, 3))
        log_s = -np.log(sd + 1e-6)
        self.params["log_s"][...] = log_s  # in place: an optimizer holds these arrays
        self.params["b"][...] = -m * np.exp(log_s)
        self.buffers["initialized"][...] = 1
        return True

    def data_init(self, x):
        """``initialize(x)`` (a no-op once initialised), then the forward pass's output."""
        self.initialize(x)
        return self.forward(x)[0]

    def forward(self, x):
        x = self._check(x)
        log_s = self.params["log_s"]
        z = x * _per_channel(np.exp(log_s)) + _per_channel(self.params["b"])
        hw = x.shape[2] * x.shape[3]
        return z, np.full(x.shape[0], hw * log_s.sum(), dtype=z.dtype), x

    def inverse(self, z):
        z = self._check(z)
        log_s = self.params["log_s"]
        x = (z - _per_channel(self.params["b"])) * _per_channel(np.exp(-log_s))
        hw = z.shape[2] * z.shape[3]
        return x, np.full(z.shape[0], -hw * log_s.sum(), dtype=x.dtype), x

    def backward(self, dz, dlogdet, cache):
        x = cache
        scale = np.exp(self.params["log_s"])
        hw = x.shape[2] * x.shape[3]
        self.grads["b"] += dz.sum(axis=(0, 2, 3))
        self.grads["log_s"] += (dz * x).sum(axis=(0, 2, 3)) * scale + hw * dlogdet.sum()
        return dz * _per_channel(scale)

    def inverse_backward(self, dx, dlogdet, cache):
        x = cache
        hw = x.shape[2] * x.shape[3]
        dz = dx * _per_channel(np.exp(-self.params["log_s"]))
        self.grads["b"] -= dz.sum(axis=(0, 2, 3))
        self.grads["log_s"] -= (dx * x).sum(axis=(0, 2, 3)) + hw * dlogdet.sum()
        return dz

    def __repr__(self):
        state = "initialized" if self.buffers["initialized"] else "not initialized"
        return f"ActNorm(channels={self.channels}, {state})"


def _mix(W, x):
    """y[n, i, h, w] = sum_j W[i, j] x[n, j, h, w]: one (C, C) @ (C, H W) product per image."""
    n, c, h, w = x.shape
    return (W @ x.reshape(n, c, h * w)).reshape(n, W.shape[0], h, w)


def _outer_sum(a, b):
    """sum_{n,h,w} a[n, :, h, w] b[n, :, h, w]^T  (C, C): the gradient of a pixel-wise mix."""
    c = a.shape[1]
    return a.transpose(1, 0, 2, 3).reshape(c, -1) @ b.transpose(1, 0, 2, 3).reshape(c, -1).T


class Invertible1x1Conv(Bijector):
    r"""Invertible 1x1 convolution: one learned C x C matrix mixes the channels of every pixel
    (a learned generalisation of a channel permutation).

    Forward:  z[n, :, h, w] = W @ x[n, :, h, w]
    Inverse:  x[n, :, h, w] = V @ z[n, :, h, w],   V = W^{-1}
    Log-det:  forward  H * W_img * log|det W|  (``slogdet``, the same for every example;
              W_img the image width);  inverse  minus that
    Backward: dx = W^T @ dz  (per pixel);
              dW = sum_{n,h,w} dz x^T + H * W_img * (sum_n dlogdet) * W^{-T}
    Inverse backward: dz = V^T @ dx  (per pixel);   dV = sum_{n,h,w} dx z^T;
              dW = -V^T dV V^T - H * W_img * (sum_n dlogdet) * W^{-T}
              (from dV = -V dW V, the derivative of a matrix inverse)

    Shapes: x, z (N, C, H, W_img); logdet (N,); parameter ``W`` (C, C), initialised as a random
    rotation (Glow), so log|det W| = 0 at the start. Caches: forward (x, W, factors), inverse
    (z, V, factors), where ``factors`` is what ``weight()`` makes W from (here W itself; the
    LU version's (L_1, U_s)), for ``weight_backward``. Cost: ``slogdet`` and the inverse are
    O(C^3) per call; ``LUInvertible1x1Conv`` makes both O(C) and O(C^2).

    References: Kingma, Dhariwal (2018), arXiv:1807.03039, section 3.2.
    """

    def __init__(self, channels, rng=None, dtype=np.float64):
        super().__init__()
        self.channels = int(channels)
        self.dim = None  # images: any H and W; see ``channels``
        self._init_weight(_random_rotation(self.channels, rng), dtype)

    def _init_weight(self, W, dtype):
        self.add_param("W", W.astype(dtype))

    def _check(self, x):
        return check_images(x, type(self).__name__, self.channels)

    # The three things the LU version does differently: how W is made (``weight`` returns W
    # and its ``factors``, here W itself), how W^{-1} and log|det W| are computed, and how the
    # gradient through W reaches the parameters. ``weight`` runs once per forward or inverse;
    # the cache carries the factors on to ``weight_backward``.
    def weight(self):
        """(W, factors): W (C, C) and what ``inverse_weight`` and ``weight_backward`` take;
        for this dense layer the factors are W itself."""
        W = self.params["W"]
        return W, W

    def inverse_weight(self, factors):
        """V = W^{-1} (C, C), from ``factors`` (here W)."""
        return np.linalg.inv(factors)

    def log_abs_det(self):
        """log|det W| (a float) of the current parameters."""
        return np.linalg.slogdet(self.params["W"])[1]

    def weight_backward(self, dW, dlogabsdet, factors):
        r"""Add the gradient of the loss through W (``dW``) and through log|det W|
        (``dlogabsdet``, a float) into ``grads``:  dW + dlogabsdet * W^{-T}, with W^{-1} from
        ``factors`` (here W)."""
        self.grads["W"] += dW + dlogabsdet * self.inverse_weight(factors).T

    def forward(self, x):
        x = self._check(x)
        W, factors = self.weight()
        z = _mix(W, x)
        hw = x.shape[2] * x.shape[3]
        return z, np.full(x.shape[0], hw * self.log_abs_det(), dtype=z.dtype), (x, W, factors)

    def inverse(self, z):
        z = self._check(z)
        _, factors = self.weight()
        V = self.inverse_weight(factors)
        x = _mix(V, z)
        hw = z.shape[2] * z.shape[3]
        return x, np.full(z.shape[0], -hw * self.log_abs_det(), dtype=x.dtype), (z, V, factors)

    def backward(self, dz, dlogdet, cache):
        x, W, factors = cache
        hw = x.shape[2] * x.shape[3]
        self.weight_backward(_outer_sum(dz, x), hw * dlogdet.sum(), factors)
        return _mix(W.T, dz)

    def inverse_backward(self, dx, dlogdet, cache):
        z, V, factors = cache
        hw = z.shape[2] * z.shape[3]
        dV = _outer_sum(dx, z)
        self.weight_backward(-V.T @ dV @ V.T, -hw * dlogdet.sum(), factors)
        return _mix(V.T, dx)

    def __repr__(self):
        return f"{type(self).__name__}(channels={self.channels})"


def _random_rotation(c, rng):
    """A random orthogonal (C, C) matrix with det +1 (Q of the QR of a Gaussian matrix)."""
    rng = np.random.default_rng() if rng is None else rng
    q, r = np.linalg.qr(rng.standard_normal((c, c)))
    q = q * np.sign(np.diag(r))  # the sign fix makes Q uniformly distributed
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class LUInvertible1x1Conv(Invertible1x1Conv):
    r"""Invertible 1x1 convolution with an LU-decomposed weight (Glow, section 3.2):

        W = P @ L_1 @ U_s,   L_1 = tril(L, -1) + I,   U_s = triu(U, 1) + diag(sign_s * exp(log_s))

    P (a permutation matrix) and ``sign_s`` (+-1) are fixed buffers; ``L``, ``U`` (C, C; only
    their strictly lower / strictly upper parts are used) and ``log_s`` (C,) are learned.

    Forward, inverse, backward and inverse backward: as ``Invertible1x1Conv``, with
    Log-det:  forward  H * W_img * sum_c log_s[c]  (det P = +-1, det L_1 = 1);  inverse minus
    V = W^{-1} = U_s^{-1} L_1^{-1} P^T  by two triangular solves (O(C^2) per column)
    Gradients of the factors from dW (the gradient through W), with dlogabsdet the upstream
    gradient of log|det W| (H * W_img * sum_n dlogdet, negated for the inverse), and L_1, U_s
    the factors ``weight()`` made in the forward or inverse pass (kept in its cache):
              dL_1 = P^T dW U_s^T;   dU_s = L_1^T P^T dW
              dL = tril(dL_1, -1);   dU = triu(dU_s, 1)
              dlog_s = diag(dU_s) * sign_s * exp(log_s) + dlogabsdet

    Shapes: x, z (N, C, H, W_img); logdet (N,). Initialised from the PLU decomposition of a
    random rotation, so the layer starts as that rotation.

    References: Kingma, Dhariwal (2018), arXiv:1807.03039, section 3.2.
    """

    def _init_weight(self, W, dtype):
        from scipy.linalg import lu  # here: importing the library stays light
        P, L_1, U_s = lu(W)  # W = P @ L_1 @ U_s
        d = np.diag(U_s)
        c = self.channels
        self.buffers["P"] = P.astype(dtype)
        self.buffers["sign_s"] = np.sign(d).astype(dtype)
        self.add_param("L", np.tril(L_1, -1).astype(dtype))
        self.add_param("U", np.triu(U_s, 1).astype(dtype))
        self.add_param("log_s", np.log(np.abs(d)).astype(dtype))
        self._lower = np.tril(np.ones((c, c), dtype=bool), -1)
        self._upper = self._lower.T

    def weight(self):
        """(W, (L_1, U_s)): W = P @ L_1 @ U_s (C, C) and its two triangular factors."""
        eye = np.eye(self.channels, dtype=self.params["L"].dtype)
        L_1 = np.where(self._lower, self.params["L"], 0) + eye
        U_s = (np.where(self._upper, self.params["U"], 0)
               + np.diag(self.buffers["sign_s"] * np.exp(self.params["log_s"])))
        return self.buffers["P"] @ L_1 @ U_s, (L_1, U_s)

    def inverse_weight(self, factors):
        from scipy.linalg import solve_triangular  # here: importing the library stays light
        L_1, U_s = factors
        PT = self.buffers["P"].T
        return solve_triangular(U_s, solve_triangular(L_1, PT, lower=True, unit_diagonal=True))

    def log_abs_det(self):
        return self.params["log_s"].sum()

    def weight_backward(self, dW, dlogabsdet, factors):
        L_1, U_s = factors
        PT_dW = self.buffers["P"].T @ dW
        dL_1 = PT_dW @ U_s.T
        dU_s = L_1.T @ PT_dW
        self.grads["L"] += np.where(self._lower, dL_1, 0)
        self.grads["U"] += np.where(self._upper, dU_s, 0)
        self.grads["log_s"] += (np.diag(dU_s) * self.buffers["sign_s"] * np.exp(self.params["log_s"])
                                + dlogabsdet)

    def check_state(self):
        P, sign_s = self.buffers["P"], self.buffers["sign_s"]
        if not (np.isin(P, (0, 1)).all() and (P.sum(axis=0) == 1).all()
                and (P.sum(axis=1) == 1).all() and np.isin(sign_s, (-1, 1)).all()):
            raise ValueError(f"LUInvertible1x1Conv: expected a permutation matrix P and signs "
                             f"sign_s in {{-1, +1}}, got P = {P.tolist()}, sign_s = "
                             f"{sign_s.tolist()}")


# ------------------------------------------------------------------ the gradcheck registry
# ``dim`` is the number of channels; images are small (H, W <= 4) so that the numerical
# Jacobian (C H W columns) stays cheap.
def _images(layer, n, rng):
    h, w = (int(v) for v in rng.integers(1, 5, size=2))
    return rng.standard_normal((n, layer.channels, h, w))


def _randomize_actnorm(layer, rng, scale):
    """Initialise from a shifted, scaled batch (so the parameters are the data-dependent ones,
    away from 0), then move them by ``scale * N(0, 1)``."""
    c = layer.channels
    x = rng.standard_normal((3, c, 2, 2)) * np.exp(_per_channel(rng.standard_normal(c)))
    layer.initialize(x + _per_channel(rng.standard_normal(c)))
    return randomize_parameters(layer, rng, scale)


def _randomize_conv(layer, rng, scale):
    """Small moves (0.2 * scale * N(0, 1)) off the random rotation: W stays well conditioned,
    so the round trip through V = W^{-1} is exact to round-off."""
    return randomize_parameters(layer, rng, 0.2 * scale)


register("ActNorm", lambda d, r: ActNorm(d), inputs=_images, randomize=_randomize_actnorm)
register("Invertible1x1Conv", lambda d, r: Invertible1x1Conv(d, rng=r), inputs=_images,
         randomize=_randomize_conv)
register("LUInvertible1x1Conv", lambda d, r: LUInvertible1x1Conv(d, rng=r), inputs=_images,
         randomize=_randomize_conv)
