"""nflows_edu: normalizing flows in NumPy, written to be read.

>>> import numpy as np, nflows_edu as nf
>>> flow = nf.models.realnvp(2, n_layers=2, hidden=(8,), rng=np.random.default_rng(0))
>>> flow.log_prob(np.zeros((3, 2))).shape
(3,)
"""
from . import bijectors, datasets, distributions, gradcheck, models, nn, optim, train
from .core import Bijector, Chain, Flow, Inverse, Module
from .io import load, save

__version__ = "0.1.0"
__all__ = ["Bijector", "Chain", "Flow", "Inverse", "Module", "bijectors", "datasets",
           "distributions", "gradcheck", "models", "nn", "optim", "train", "save", "load"]
