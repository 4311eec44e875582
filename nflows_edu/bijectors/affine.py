r"""The affine math shared by three families: the soft bound of a log-scale and the affine
transform of the changed features with its VJPs.

``AffineCoupling`` (``coupling.py``) and the image couplings (``image_coupling.py``) use the
affine transform; they and the autoregressive layers (``MAF``, ``IAF``) bound their log-scales
with ``soft_bound``. Plain functions on arrays of any shape (vectors (N, D_b), masked images
(N, C, H, W)); ``dlogdet`` comes broadcastable to ``s``.
"""
import numpy as np


def soft_bound(r, s_max):
    r"""s = s_max * tanh(r / s_max): a log-scale bounded to (-s_max, s_max), with s ~ r near 0.

    The bound keeps one bad step from producing exp(s) = inf. Shared by ``AffineCoupling``
    and the autoregressive layers (``MAF``, ``IAF``).
    """
    return s_max * np.tanh(r / s_max)


def soft_bound_backward(ds, s, s_max):
    r"""dr = ds * (1 - (s / s_max)^2): the VJP of ``soft_bound``, written with its output s."""
    return ds * (1 - (s / s_max) ** 2)


# The affine transform of the changed half, on arrays of any shape (vectors (N, D_b) in
# ``coupling``, masked images (N, C, H, W) in ``image_coupling``); ``dlogdet`` comes
# broadcastable to ``s``.
def affine_forward(x_b, s, t):
    r"""z_b = x_b * exp(s) + t."""
    return x_b * np.exp(s) + t


def affine_inverse(z_b, s, t):
    r"""x_b = (z_b - t) * exp(-s)."""
    return (z_b - t) * np.exp(-s)


def affine_backward(dz_b, x_b, s, dlogdet):
    r"""VJP of (z_b, logdet = sum s):  dx_b = dz_b * exp(s);  ds = dz_b * x_b * exp(s) + dlogdet;
    dt = dz_b.  Returns (dx_b, ds, dt)."""
    return dz_b * np.exp(s), dz_b * x_b * np.exp(s) + dlogdet, dz_b


def affine_inverse_backward(dx_b, x_b, s, dlogdet):
    r"""VJP of (x_b, logdet = -sum s):  dz_b = dx_b * exp(-s);  ds = -dx_b * x_b - dlogdet;
    dt = -dz_b.  Returns (dz_b, ds, dt)."""
    dz_b = dx_b * np.exp(-s)
    return dz_b, -dx_b * x_b - dlogdet, -dz_b
