r"""The basic layers: ``Linear``, the activations (``ReLU``, ``LeakyReLU``, ``Tanh``),
``Sequential`` (what ``MLP``, ``MADE`` and ``ConvNet`` share) and ``MLP``: the conditioner
networks of the coupling layers."""
import numpy as np

from ..core import Module, check_array


ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sine")


class Linear(Module):
    r"""Affine layer.

    Forward:  y = x @ W + b,        x (N, I), W (I, O), b (O,), y (N, O)
    Backward: dW = x^T @ dy;  db = sum_n dy;  dx = dy @ W^T

    ``zero=True`` starts with W = 0, b = 0 (a coupling layer then starts as the identity);
    otherwise W, b ~ U(-1/sqrt(I), 1/sqrt(I)).
    """

    def __init__(self, n_in, n_out, rng=None, dtype=np.float64, zero=False):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        bound = 1.0 / np.sqrt(n_in)
        W = np.zeros((n_in, n_out)) if zero else rng.uniform(-bound, bound, (n_in, n_out))
        b = np.zeros(n_out) if zero else rng.uniform(-bound, bound, n_out)
        self.add_param("W", W.astype(dtype))
        self.add_param("b", b.astype(dtype))
        self.n_in, self.n_out = n_in, n_out

    def forward(self, x):
        # np.dot is the same product as x @ W; NumPy's @ does not hand an inner dimension of 1
        # to BLAS (the first layer of a coupling on 2-D data), and is 6x slower there.
        y = np.dot(x, self.params["W"])
        y += self.params["b"]  # in place: one pass less over y than `np.dot(...) + b`
        return y, x

    def backward(self, dy, cache):
        x = cache
        self.grads["W"] += x.T @ dy
        self.grads["b"] += dy.sum(axis=0)
        return dy @ self.params["W"].T

    def __repr__(self):
        return f"Linear({self.n_in}, {self.n_out})"


class ReLU(Module):
    r"""Forward: y = max(x, 0).   Backward: dx = dy * [x > 0].   The cache is ``x``."""

    def forward(self, x):
        return np.maximum(x, 0), x

    def backward(self, dy, cache):
        x = cache
        return dy * (x > 0)

    def __repr__(self):
        return "ReLU()"


class LeakyReLU(Module):
    r"""Forward: y = x if x > 0 else alpha * x.   Backward: dx = dy * (1 if x > 0 else alpha).

    The cache is ``x``.
    """

    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return np.where(x > 0, x, self.alpha * x), x

    def backward(self, dy, cache):
        x = cache
        return dy * np.where(x > 0, 1.0, self.alpha).astype(dy.dtype, copy=False)

    def __repr__(self):
        return f"LeakyReLU({self.alpha})"


class Tanh(Module):
    r"""Forward: y = tanh(x).   Backward: dx = dy * (1 - y^2).   The cache is ``y``."""

    def forward(self, x):
        y = np.tanh(x)
        return y, y

    def backward(self, dy, cache):
        y = cache
        return dy * (1 - y**2)

    def __repr__(self):
        return "Tanh()"


class Sine(Module):
    r"""Sine activation, 1-Lipschitz (ImpFlow's toy experiments; a continuous flow's field).

    Forward:  y = sin(2 pi x) / (2 pi)
    Derivatives: y' = cos(2 pi x);   y'' = -2 pi sin(2 pi x)
    Backward: dx = dy * y'
    References: Lu et al. (2021), "Implicit Normalizing Flows", ICLR, arXiv:2103.09527.
    """

    def __init__(self, dtype=None):  # no parameters; dtype accepted like LipSwish's
        super().__init__()

    def derivatives(self, x):
        """(y, y', y'') elementwise."""
        s = np.sin(2 * np.pi * x)
        return s / (2 * np.pi), np.cos(2 * np.pi * x), -2 * np.pi * s

    def param_backward(self, x, dy, dd1=None):
        """No parameters."""

    def forward(self, x):
        return np.sin(2 * np.pi * x) / (2 * np.pi), x

    def backward(self, dy, cache):
        return dy * np.cos(2 * np.pi * cache)

    def __repr__(self):
        return "Sine()"



def make_activation(name):
    """The activation module called ``name`` (one of ``ACTIVATIONS``)."""
    if name == "relu":
        return ReLU()
    if name == "leaky_relu":
        return LeakyReLU()
    if name == "tanh":
        return Tanh()
    if name == "sine":
        return Sine()
    raise ValueError(f"make_activation: expected one of {ACTIVATIONS}, got {name!r}")


class Sequential(Module):
    r"""Layers applied one after the other: what ``MLP``, ``MADE`` and ``ConvNet`` share.

    Forward:  h_0 = x;  h_k = layer_k(h_{k-1});  y = h_K
    Backward: dh_K = dy;  dh_{k-1} = layer_k.backward(dh_k), from the last layer to the first.

    ``layers`` is a list of modules. ``Sequential.forward`` is ``_forward`` and checks nothing
    (it does not know the input's width); ``MLP``, ``MADE`` and ``ConvNet`` override ``forward``
    to check the input first, and ``_forward`` skips the check for a caller that has checked it
    already (a coupling layer checks its own input).
    """

    def __init__(self, layers=()):
        super().__init__()
        self.layers = list(layers)

    def forward(self, x):
        return self._forward(x)

    def _forward(self, x):
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, caches

    def backward(self, dy, caches):
        for layer, cache in zip(reversed(self.layers), reversed(caches)):
            dy = layer.backward(dy, cache)
        return dy


class MLP(Sequential):
    r"""Multi-layer perceptron: Linear, activation, ..., Linear.

    Forward:  h_0 = x;  h_k = act(h_{k-1} @ W_k + b_k);  y = h_{K-1} @ W_K + b_K
    Backward: the layers' backward passes in reverse order.

    Parameters
    ----------
    sizes : sequence of int
        ``(n_in, hidden_1, ..., n_out)``.
    activation : {"relu", "leaky_relu", "tanh", "sine"} (``Sine``: sin(2 pi a) / (2 pi))
    zero_last : bool
        Initialise the last Linear to zero, so the network outputs 0 at the start.
    """

    def __init__(self, sizes, activation="relu", zero_last=False, rng=None, dtype=np.float64):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"MLP: expected sizes (n_in, ..., n_out), got {sizes!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.sizes = tuple(int(s) for s in sizes)
        self.layers = []
        for k, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            last = k == len(self.sizes) - 2
            self.layers.append(Linear(n_in, n_out, rng, dtype, zero=last and zero_last))
            if not last:
                self.layers.append(make_activation(activation))

    def forward(self, x):
        x = check_array(x, "MLP", self.sizes[0])
        return self._forward(x)

    def __repr__(self):
        return f"MLP({self.sizes}, {self.layers[1]!r})" if len(self.layers) > 1 else \
            f"MLP({self.sizes})"
