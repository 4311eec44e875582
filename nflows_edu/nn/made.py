r"""MADE: masked autoencoder for distribution estimation (the conditioner of MAF and IAF)."""
import numpy as np

from ..core import Module, check_array
from .basic import Sequential, make_activation


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


class MADE(Sequential):
    r"""Masked autoencoder for distribution estimation: outputs ``(mu, alpha)`` per feature
    (or ``n_params`` numbers per feature), each depending only on the features that come
    before it in the order.

    Degrees (Germain et al. 2015): inputs m(x_i) in 1..D (``input_degrees``); hidden units
    m(h_j) in 1..D-1 (``hidden_degrees``, spread evenly); outputs mu_i and alpha_i (every
    output of feature i) get the degree of x_i. Masks, with "->" a weight from a unit of the
    row layer to the column layer:

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
    n_params : int
        Outputs per feature, P >= 1 (default 2: mu and alpha). Output ``p * D + i`` is the
        p-th number of feature i: ``out.reshape(N, P, D)[:, p, i]`` (a spline
        autoregressive layer takes P = 3K - 1).

    Shapes: x (N, D) -> out (N, P D), P = ``n_params``.

    References: Germain, Gregor, Murray, Larochelle (2015), "MADE: Masked Autoencoder for
    Distribution Estimation", arXiv:1502.03509
    """

    def __init__(self, dim, hidden=(64, 64), order="natural", activation="relu",
                 zero_last=False, rng=None, dtype=np.float64, n_params=2):
        super().__init__()
        if int(dim) != dim or dim < 2:
            raise ValueError(f"MADE: expected dim >= 2, got {dim!r}")
        if isinstance(n_params, bool) or int(n_params) != n_params or n_params < 1:
            raise ValueError(f"MADE: expected n_params >= 1 outputs per feature, got "
                             f"{n_params!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.dim = dim = int(dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.n_params = int(n_params)
        in_deg = input_degrees(dim, order)
        self.order = np.argsort(in_deg)  # the features in the order they are generated
        # degrees[k]: of the units of layer k (inputs, hidden layers, then the P D outputs)
        self.degrees = [in_deg] + [hidden_degrees(dim, h) for h in self.hidden] \
            + [np.tile(in_deg, self.n_params)]
        self.layers = []
        masks = self.masks()
        for k, mask in enumerate(masks):
            last = k == len(masks) - 1
            self.layers.append(MaskedLinear(mask, rng, dtype, zero=last and zero_last))
            if not last:
                self.layers.append(make_activation(activation))

    def masks(self):
        r"""The binary masks of the MaskedLinear layers, from the degrees in ``self.degrees``:
        ``[M_1, ..., M_out]``, M_k of shape (units of layer k-1, units of layer k),

            M[a, b] = [m(b) >= m(a)]   into a hidden layer;   M[a, b] = [m(b) > m(a)]   into
            the outputs (strict: output i must not see x_i itself).
        """
        masks = []
        for k in range(len(self.degrees) - 1):
            d_in, d_out = self.degrees[k], self.degrees[k + 1]
            last = k == len(self.degrees) - 2
            masks.append(d_out[None, :] > d_in[:, None] if last
                         else d_out[None, :] >= d_in[:, None])
        return masks

    @property
    def masked_layers(self):
        return [layer for layer in self.layers if isinstance(layer, MaskedLinear)]

    def mask_product(self):
        r"""Connectivity (D, P D): entry [i, j] counts the paths from input x_i to output j
        through the masks (M_1 @ M_2 @ ... @ M_out). Zero unless m(x_i) < m(out_j)."""
        product = np.eye(self.dim, dtype=np.int64)
        for layer in self.masked_layers:
            product = product @ layer.mask.astype(np.int64)
        return product

    def forward(self, x):
        x = check_array(x, "MADE", self.dim)
        return self._forward(x)

    def __repr__(self):
        return (f"MADE(dim={self.dim}, hidden={self.hidden}, order={self.order.tolist()}, "
                f"activation={self.activation!r})")
