"""Bijectors, one file per family."""
from .coupling import AdditiveCoupling, AffineCoupling, alternating_mask
from .elementwise import Scaling
from .permutation import Permutation, Reverse
from .implicit import ImplicitBlock
from .residual import ConvergenceError, ResidualBlock

__all__ = ["AdditiveCoupling", "AffineCoupling", "alternating_mask", "Scaling", "Permutation",
           "Reverse", "ResidualBlock", "ConvergenceError", "ImplicitBlock"]
