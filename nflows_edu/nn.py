r"""Conditioner networks with hand-written backward passes.

Same pattern as the bijectors, without log-determinants (cs231n style):
``forward(x) -> (y, cache)`` and ``backward(dy, cache) -> dx``, which *adds* parameter
gradients into ``grads``.
"""
import numpy as np

from .core import Module, check_array

ACTIVATIONS = ("relu", "leaky_relu", "tanh")


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
        y = x @ self.params["W"] + self.params["b"]
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


def make_activation(name):
    """The activation module called ``name`` (one of ``ACTIVATIONS``)."""
    if name == "relu":
        return ReLU()
    if name == "leaky_relu":
        return LeakyReLU()
    if name == "tanh":
        return Tanh()
    raise ValueError(f"make_activation: expected one of {ACTIVATIONS}, got {name!r}")


class MLP(Module):
    r"""Multi-layer perceptron: Linear, activation, ..., Linear.

    Forward:  h_0 = x;  h_k = act(h_{k-1} @ W_k + b_k);  y = h_{K-1} @ W_K + b_K
    Backward: the layers' backward passes in reverse order.

    Parameters
    ----------
    sizes : sequence of int
        ``(n_in, hidden_1, ..., n_out)``.
    activation : {"relu", "leaky_relu", "tanh"}
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

    def _forward(self, x):
        """``forward`` without the input check, for a caller that has checked ``x`` already
        (a coupling layer checks its own input)."""
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, caches

    def backward(self, dy, caches):
        for layer, cache in zip(reversed(self.layers), reversed(caches)):
            dy = layer.backward(dy, cache)
        return dy

    def __repr__(self):
        return f"MLP({self.sizes}, {self.layers[1]!r})" if len(self.layers) > 1 else \
            f"MLP({self.sizes})"


# ---------------------------------------------------------------------------------------------
# MADE: masked autoencoder for distribution estimation (the conditioner of MAF and IAF)
# ---------------------------------------------------------------------------------------------

def input_degrees(dim, order="natural"):
    r"""Degrees ``m(x_i)`` of the inputs for an ordering of the features.

    ``order`` is ``"natural"`` (x_0 first), ``"reversed"`` (x_{D-1} first) or a permutation
    ``p`` of 0..D-1 listing the features in the order they are generated: feature ``p[k]``
    gets degree ``k + 1``, so it may depend on ``p[0], ..., p[k-1]`` only.

    Returns an int64 array (D,) holding each of 1..D once.
    """
    if isinstance(order, str):
        if order == "natural":
            return np.arange(1, dim + 1)
        if order == "reversed":
            return np.arange(dim, 0, -1)
        raise ValueError(f"MADE: expected order 'natural', 'reversed' or a permutation of "
                         f"0..{dim - 1}, got {order!r}")
    perm = np.asarray(order)
    if (perm.shape != (dim,) or perm.dtype.kind not in "iu"
            or not np.array_equal(np.sort(perm), np.arange(dim))):
        raise ValueError(f"MADE: expected order 'natural', 'reversed' or a permutation of "
                         f"0..{dim - 1}, got {order!r}")
    degrees = np.empty(dim, dtype=np.int64)
    degrees[perm] = np.arange(1, dim + 1)
    return degrees


def hidden_degrees(dim, n_units):
    r"""Degrees of ``n_units`` hidden units, spread evenly over 1..D-1 and sorted:

        m(h_j) = 1 + floor(j (D - 1) / H),   j = 0..H-1

    so each degree gets floor(H / (D-1)) or ceil(H / (D-1)) units, and the units of one degree
    are contiguous (the sequential kernel in ``nflows_edu.kernels`` relies on that). Degree D
    is left out: a unit of degree D could only feed outputs of degree > D, and there are none.
    """
    if n_units < dim - 1:
        raise ValueError(f"MADE: a hidden layer of {n_units} units cannot hold every degree "
                         f"1..{dim - 1}; expected at least D - 1 = {dim - 1} units (with fewer, "
                         "some inputs could never reach the outputs that may depend on them)")
    return 1 + (np.arange(n_units) * (dim - 1)) // n_units


class MaskedLinear(Module):
    r"""Affine layer with a fixed binary mask on its weights.

    Forward:  y = x @ (W * M) + b,     x (N, I), W and M (I, O), b (O,), y (N, O)
    Backward: dW = (x^T @ dy) * M;  db = sum_n dy;  dx = dy @ (W * M)^T

    The mask multiplies the gradient as well, so a masked-out weight gets a gradient of
    exactly 0 and the optimizer never moves it (its value is irrelevant: forward masks it).
    ``M`` is derived from the degrees of a ``MADE``, so it is not saved with the model.
    """

    def __init__(self, mask, rng=None, dtype=np.float64, zero=False):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        mask = np.asarray(mask)
        if mask.ndim != 2 or not np.isin(mask, (0, 1)).all():
            raise ValueError(f"MaskedLinear: expected a 2-D binary mask, got shape {mask.shape}")
        self.n_in, self.n_out = mask.shape
        self.mask = mask.astype(dtype)
        bound = 1.0 / np.sqrt(self.n_in)
        shape = mask.shape
        W = np.zeros(shape) if zero else rng.uniform(-bound, bound, shape)
        b = np.zeros(self.n_out) if zero else rng.uniform(-bound, bound, self.n_out)
        self.add_param("W", (W * mask).astype(dtype))
        self.add_param("b", b.astype(dtype))

    def masked_weight(self):
        """W * M (a new array)."""
        return self.params["W"] * self.mask

    def forward(self, x):
        WM = self.masked_weight()
        return x @ WM + self.params["b"], (x, WM)

    def backward(self, dy, cache):
        x, WM = cache
        dW = x.T @ dy
        dW *= self.mask
        self.grads["W"] += dW
        self.grads["b"] += dy.sum(axis=0)
        return dy @ WM.T

    def __repr__(self):
        return f"MaskedLinear({self.n_in}, {self.n_out})"


class MADE(Module):
    r"""Masked autoencoder for distribution estimation: outputs ``(mu, alpha)`` per feature,
    each depending only on the features that come before it in the order.

    Degrees (Germain et al. 2015): inputs m(x_i) in 1..D (``input_degrees``); hidden units
    m(h_j) in 1..D-1 (``hidden_degrees``, spread evenly); outputs mu_i and alpha_i get the
    degree of x_i. Masks, with "->" a weight from a unit of the row layer to the column layer:

        input -> hidden, hidden -> hidden:  M[a, b] = [m(b) >= m(a)]
        hidden -> output (or input -> output when there is no hidden layer):
                                           M[a, b] = [m(b) >  m(a)]

    Every path from x_i to an output of degree d then passes degrees m(x_i) <= ... < d, so
    mu_i and alpha_i depend on x_j only if m(x_j) < m(x_i): the Jacobian d(mu, alpha)/dx is
    strictly triangular in the order (``mask_product`` is that connectivity).

    Forward:  h_0 = x;  h_k = act(h_{k-1} @ (W_k * M_k) + b_k);
              out = h_K @ (W_out * M_out) + b_out;   mu = out[:, :D],  alpha = out[:, D:]
    Backward: the layers' backward passes in reverse order (``MaskedLinear.backward``).

    Parameters
    ----------
    dim : int, D >= 2
    hidden : sequence of int
        Hidden layer sizes, each at least D - 1 (any number of layers, also none).
    order : "natural", "reversed" or a permutation of 0..D-1 (see ``input_degrees``)
    activation : {"relu", "leaky_relu", "tanh"}
    zero_last : bool
        Start the output layer at zero, so mu = alpha = 0 (a MAF layer is then the identity).

    Shapes: x (N, D) -> out (N, 2 D).

    References: Germain, Gregor, Murray, Larochelle (2015), "MADE: Masked Autoencoder for
    Distribution Estimation", arXiv:1502.03509
    """

    def __init__(self, dim, hidden=(64, 64), order="natural", activation="relu",
                 zero_last=False, rng=None, dtype=np.float64):
        super().__init__()
        if int(dim) != dim or dim < 2:
            raise ValueError(f"MADE: expected dim >= 2, got {dim!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.dim = dim = int(dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        in_deg = input_degrees(dim, order)
        self.order = np.argsort(in_deg)  # the features in the order they are generated
        # degrees[k]: of the units of layer k (inputs, hidden layers, then the 2 D outputs)
        self.degrees = [in_deg] + [hidden_degrees(dim, h) for h in self.hidden] \
            + [np.concatenate([in_deg, in_deg])]
        self.layers = []
        for k in range(len(self.degrees) - 1):
            d_in, d_out = self.degrees[k], self.degrees[k + 1]
            last = k == len(self.degrees) - 2
            mask = d_out[None, :] > d_in[:, None] if last else d_out[None, :] >= d_in[:, None]
            self.layers.append(MaskedLinear(mask, rng, dtype, zero=last and zero_last))
            if not last:
                self.layers.append(make_activation(activation))

    @property
    def masked_layers(self):
        return [layer for layer in self.layers if isinstance(layer, MaskedLinear)]

    def mask_product(self):
        r"""Connectivity (D, 2 D): entry [i, j] counts the paths from input x_i to output j
        through the masks (M_1 @ M_2 @ ... @ M_out). Zero unless m(x_i) < m(out_j)."""
        product = np.eye(self.dim, dtype=np.int64)
        for layer in self.masked_layers:
            product = product @ layer.mask.astype(np.int64)
        return product

    def forward(self, x):
        x = check_array(x, "MADE", self.dim)
        return self._forward(x)

    def _forward(self, x):
        """``forward`` without the input check, for a caller that checked ``x`` already."""
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, caches

    def backward(self, dout, caches):
        for layer, cache in zip(reversed(self.layers), reversed(caches)):
            dout = layer.backward(dout, cache)
        return dout

    def __repr__(self):
        return (f"MADE(dim={self.dim}, hidden={self.hidden}, order={self.order.tolist()}, "
                f"activation={self.activation!r})")
