"""nflows_edu: normalizing flows in NumPy, written to be read.

>>> import numpy as np, nflows_edu as nf
>>> flow = nf.models.realnvp(2, n_layers=2, hidden=(8,), rng=np.random.default_rng(0))
>>> flow.log_prob(np.zeros((3, 2))).shape
(3,)
"""
import numpy as _np


def _keep_freed_memory(nbytes=16 << 20):
    r"""Stop glibc's malloc from handing the memory of every training step back to the OS.

    A step allocates its caches (megabytes) in forward and frees them in backward. glibc returns
    free memory at the top of its heap to the OS once more than twice its mmap threshold
    (128 KiB at start) is free, so the next step page-faults it all back in: ~550 faults, about
    half the time of a float32 RealNVP step on 2-D data. When glibc frees a block it had
    mmapped, it raises that threshold to the block's size, for the rest of the process; one
    16 MiB array, allocated and freed at import (never touched: two system calls), sets it to
    16 MiB, so up to 32 MiB of freed memory stays in the process. Other allocators ignore this.
    Nothing in the library depends on it; it only saves time.
    """
    _np.empty(nbytes, dtype=_np.uint8)


_keep_freed_memory()

from . import (bijectors, datasets, distributions, gradcheck, models, nn,  # noqa: E402
               optim, train)
from .core import Bijector, Chain, Flow, Inverse, Module  # noqa: E402
from .io import load, save  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Bijector", "Chain", "Flow", "Inverse", "Module", "bijectors", "datasets",
           "distributions", "gradcheck", "models", "nn", "optim", "train", "save", "load"]
