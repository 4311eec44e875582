"""Bijectors, one file per family."""
# The registry lists layers in the order their modules are imported (``nflows-edu check``
# prints them so, and ``check_all`` draws for them in that order): the couplings first.
from .coupling import AdditiveCoupling, AffineCoupling, alternating_mask  # noqa: I001
from .autoregressive import IAF, MAF
from .cnf import CNF, TimeField
from .elementwise import Scaling
from .glow import ActNorm, Invertible1x1Conv, LUInvertible1x1Conv
from .image_coupling import (GlowCoupling, ImageAffineCoupling, ImageSplineCoupling, Split,
                             channel_mask, checkerboard_mask)
from .implicit import ImplicitBlock
from .multiscale import MultiScale, glow_levels, realnvp_levels
from .normalization import BatchNorm, BatchNorm2d
from .permutation import Permutation, Reverse
from .planar_radial import Planar, Radial
from .preprocess import Logit, ScaleToUnit, dequantize
from .reshape import Squeeze, squeeze, unsqueeze
from .spline import RQSpline, SplineCoupling
from .spline_autoregressive import SplineAutoregressive
from .residual import ConvergenceError, ResidualBlock

__all__ = ["AdditiveCoupling", "AffineCoupling", "alternating_mask", "Scaling", "Permutation",
           "Reverse", "ResidualBlock", "ConvergenceError", "ImplicitBlock", "MAF", "IAF",
           "BatchNorm", "BatchNorm2d", "Logit", "ScaleToUnit", "dequantize", "Planar", "Radial",
           "ActNorm", "Invertible1x1Conv", "LUInvertible1x1Conv", "Squeeze",
           "squeeze", "unsqueeze", "ImageAffineCoupling",
           "checkerboard_mask", "channel_mask", "GlowCoupling", "Split", "MultiScale",
           "glow_levels", "realnvp_levels", "RQSpline", "SplineCoupling", "ImageSplineCoupling",
           "SplineAutoregressive", "CNF", "TimeField"]
