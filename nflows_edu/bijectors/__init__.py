"""Bijectors, one file per family."""
from .autoregressive import IAF, MAF
from .coupling import AdditiveCoupling, AffineCoupling, alternating_mask
from .elementwise import Scaling
from .normalization import BatchNorm
from .permutation import Permutation, Reverse
from .planar_radial import Planar, Radial
from .preprocess import Logit, ScaleToUnit, dequantize

__all__ = ["AdditiveCoupling", "AffineCoupling", "alternating_mask", "Scaling", "Permutation",
           "Reverse", "MAF", "IAF", "BatchNorm", "Logit",
           "ScaleToUnit", "dequantize", "Planar", "Radial"]
