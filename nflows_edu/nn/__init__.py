r"""Conditioner networks with hand-written backward passes.

Same pattern as the bijectors, without log-determinants (cs231n style):
``forward(x) -> (y, cache)`` and ``backward(dy, cache) -> dx``, which *adds* parameter
gradients into ``grads``.

* ``basic``: ``Linear``, the activations, ``Sequential`` and ``MLP``;
* ``made``: ``MaskedLinear`` and ``MADE`` (the conditioner of MAF and IAF);
* ``lipschitz``: ``SpectralLinear``, ``LipSwish``, ``Sine`` and ``LipschitzMLP`` (residual and
  implicit flows);
* ``conv``: ``Conv2d``, ``ConvNet`` and ``ResNet`` (the image flows).

Everything is re-exported here: ``from nflows_edu.nn import MADE`` and ``nn.MADE`` work.
"""
from .basic import (ACTIVATIONS, MLP, LeakyReLU, Linear, ReLU, Sequential, Tanh,
                    make_activation)
from .conv import Conv2d, ConvNet, ResNet, im2col, matmul
from .lipschitz import (LIPSCHITZ_ACTIVATIONS, LipschitzMLP, LipSwish, Sine, SpectralLinear,
                        check_lipschitz_bound, top_singular_pair)
from .made import MADE, MaskedLinear, hidden_degrees, input_degrees

__all__ = ["ACTIVATIONS", "Linear", "ReLU", "LeakyReLU", "Tanh", "make_activation",
           "Sequential", "MLP", "input_degrees", "hidden_degrees", "MaskedLinear", "MADE",
           "top_singular_pair", "check_lipschitz_bound", "SpectralLinear", "LipSwish", "Sine",
           "LIPSCHITZ_ACTIVATIONS", "LipschitzMLP", "matmul", "im2col", "Conv2d", "ConvNet",
           "ResNet"]
