r"""Conditioner networks with hand-written backward passes.

Same pattern as the bijectors, without log-determinants (cs231n style):
``forward(x) -> (y, cache)`` and ``backward(dy, cache) -> dx``, which *adds* parameter
gradients into ``grads``.
"""
import numpy as np

from .core import Module, check_array, check_images

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


def make_activation(name):
    """The activation module called ``name`` (one of ``ACTIVATIONS``)."""
    if name == "relu":
        return ReLU()
    if name == "leaky_relu":
        return LeakyReLU()
    if name == "tanh":
        return Tanh()
    raise ValueError(f"make_activation: expected one of {ACTIVATIONS}, got {name!r}")


class Sequential(Module):
    r"""Layers applied one after the other: what ``MLP``, ``MADE`` and ``ConvNet`` share.

    Forward:  h_0 = x;  h_k = layer_k(h_{k-1});  y = h_K
    Backward: dh_K = dy;  dh_{k-1} = layer_k.backward(dh_k), from the last layer to the first.

    ``layers`` is a list of modules; ``forward`` checks the input, ``_forward`` skips the check
    for a caller that has checked it already (a coupling layer checks its own input).
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


# Lipschitz networks for residual and implicit flows (bijectors/residual.py, implicit.py):
# a spectrally normalised Linear, 1-Lipschitz activations with first and second derivatives,
# and an MLP that propagates Jacobian-vector products forward and back.
# ---------------------------------------------------------------------------------------------

def top_singular_pair(W):
    """(u, v): unit vectors with u^T W v = ||W||_2, the largest singular value of W (I, O)."""
    U, _, Vt = np.linalg.svd(W, full_matrices=False)
    return U[:, 0].copy(), Vt[0].copy()


def _check_lipschitz_bound(c, where):
    if not (isinstance(c, (int, float, np.floating)) and 0 < c < 1):
        raise ValueError(f"{where}: expected a Lipschitz bound c with 0 < c < 1 (the residual "
                         f"map must be a contraction to be invertible), got {c!r}")
    return float(c)


class SpectralLinear(Module):
    r"""Affine layer whose weight is spectrally normalised to norm at most ``c``.

    Forward:  sigma = u^T W v;   s = max(1, sigma / c);   W_hat = W / s
              y = x @ W_hat + b,                x (N, I), W (I, O), u (I,), v (O,), y (N, O)
    Backward: dW_hat = x^T @ dy;  db = sum_n dy;  dx = dy @ W_hat^T
              dW = dW_hat                                     if s == 1
              dW = (dW_hat - <dW_hat, W_hat> u v^T / c) / s    if s > 1  (s = sigma / c)
              (u, v held constant, as in Miyato et al. and the residual-flow papers)

    Where u and v come from depends on the mode (``train()`` / ``eval()``):

    * **training**: ``u`` and ``v`` are buffers (saved with the model, not trained), the
      papers' power iteration ``v <- W^T u / ||W^T u||;  u <- W v / ||W v||``, which drives
      ``u^T W v`` up to the largest singular value of ``W``. ``forward`` never changes them,
      so the layer is a deterministic function of its parameters and buffers (the
      finite-difference checks need that); ``update(n)`` runs ``n`` steps, and a
      ``ResidualBlock`` calls it after each backward pass (``power_iterations``). The
      estimate lags the weights it follows: ``u^T W v <= ||W||_2`` for unit u, v, so right
      after the weights move (a large step, a perturbation) ``||W_hat||_2`` can exceed c.
    * **evaluation**: ``u`` and ``v`` are the exact top singular vectors of the weights as
      they are now (``top_singular_pair``, an SVD: the matrices here are at most a few
      hundred wide), so sigma = ||W||_2 and ``||W_hat||_2 <= c`` holds for *any*
      parameters, which is what sampling and density evaluation of a residual flow need.
      The backward formula above is then the exact gradient (d sigma / dW = u v^T).

    References: Miyato, Kataoka, Koyama, Yoshida (2018), arXiv:1802.05957;
    Behrmann et al. (2019), arXiv:1811.00995, section 3.2.
    """

    def __init__(self, n_in, n_out, c=0.9, rng=None, dtype=np.float64):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.c = _check_lipschitz_bound(c, "SpectralLinear")
        bound = 1.0 / np.sqrt(n_in)
        self.add_param("W", rng.uniform(-bound, bound, (n_in, n_out)).astype(dtype))
        self.add_param("b", rng.uniform(-bound, bound, n_out).astype(dtype))
        u = rng.standard_normal(n_in)
        self.buffers["u"] = (u / np.linalg.norm(u)).astype(dtype)
        self.buffers["v"] = np.zeros(n_out, dtype=dtype)
        self.n_in, self.n_out = n_in, n_out
        self.update(100)

    def update(self, n=1):
        """Run ``n`` power-iteration steps on ``u``, ``v`` (in place); returns sigma = u^T W v."""
        W, u, v = self.params["W"], self.buffers["u"], self.buffers["v"]
        for _ in range(int(n)):
            Wu = W.T @ u
            v[...] = Wu / max(np.linalg.norm(Wu), 1e-30)
            Wv = W @ v
            u[...] = Wv / max(np.linalg.norm(Wv), 1e-30)
        return float(u @ W @ v)

    def converge(self):
        """Set ``u``, ``v`` to the exact top singular vectors of ``W``, so the power iteration
        starts from where it would converge; returns sigma = ||W||_2. ``train.fit`` calls it
        before the first step: weights moved without the iteration (a perturbation, edited or
        loaded arrays) would otherwise start training with a bound that does not hold."""
        u, v = top_singular_pair(self.params["W"])
        self.buffers["u"][...], self.buffers["v"][...] = u, v
        return float(u @ self.params["W"] @ v)

    def weight(self):
        """(W_hat, s, u, v): the normalised weight, its divisor s >= 1, and the u, v it used
        (copies of the buffers in training mode, the exact singular vectors in evaluation)."""
        W = self.params["W"]
        if self.training:
            u, v = self.buffers["u"].copy(), self.buffers["v"].copy()
        else:
            u, v = top_singular_pair(W)
        sigma = u @ W @ v
        s = max(1.0, float(sigma) / self.c)
        return W / s, s, u, v

    def weight_backward(self, dW_hat, W_hat, s, u, v):
        """Add dW (from dW_hat, the gradient with respect to W_hat) into ``grads['W']``."""
        if s == 1.0:
            self.grads["W"] += dW_hat
        else:
            self.grads["W"] += (dW_hat - np.sum(dW_hat * W_hat) / self.c * np.outer(u, v)) / s

    def forward(self, x):
        W_hat, s, u, v = self.weight()
        return x @ W_hat + self.params["b"], (x, W_hat, s, u, v)

    def backward(self, dy, cache):
        x, W_hat, s, u, v = cache
        self.weight_backward(x.T @ dy, W_hat, s, u, v)
        self.grads["b"] += dy.sum(axis=0)
        return dy @ W_hat.T

    def __repr__(self):
        return f"SpectralLinear({self.n_in}, {self.n_out}, c={self.c})"


class LipSwish(Module):
    r"""LipSwish, a smooth 1-Lipschitz activation (Residual Flows).

    Forward:  beta = softplus(rho);  q = sigmoid(beta x);  y = x q / 1.1
    Derivatives (for the Jacobian of a residual block):
              y'  = (q + beta x q (1 - q)) / 1.1
              y'' = beta q (1 - q) (2 + beta x (1 - 2 q)) / 1.1
    Backward: dx = dy * y';   drho = sigmoid(rho) * sum(dy * dy/dbeta),  dy/dbeta = x^2 q (1-q)/1.1

    Swish's slope never exceeds about 1.0998 for any beta > 0, so dividing by 1.1 makes it
    1-Lipschitz; softplus keeps beta positive while rho is unconstrained. rho starts at 0.5.
    References: Chen, Behrmann, Duvenaud, Jacobsen (2019), arXiv:1906.02735, section 4.
    """

    def __init__(self, dtype=np.float64):
        super().__init__()
        self.add_param("rho", np.full(1, 0.5, dtype=dtype))

    def beta(self):
        return np.logaddexp(0, self.params["rho"][0])  # softplus, without overflow

    def derivatives(self, x):
        """(y, y', y'') elementwise."""
        beta = self.beta()
        q = 0.5 * (1 + np.tanh(0.5 * beta * x))  # sigmoid, without overflow
        qq = q * (1 - q)
        y = x * q / 1.1
        d1 = (q + beta * x * qq) / 1.1
        d2 = beta * qq * (2 + beta * x * (1 - 2 * q)) / 1.1
        return y, d1, d2

    def param_backward(self, x, dy, dd1=None):
        r"""Add drho for upstream gradients ``dy`` of y and (optionally) ``dd1`` of y'.

        dy/dbeta = x^2 q (1 - q) / 1.1;   dy'/dbeta = x q (1 - q) (2 + beta x (1 - 2 q)) / 1.1
        """
        beta = self.beta()
        q = 0.5 * (1 + np.tanh(0.5 * beta * x))
        qq = q * (1 - q)
        dbeta = np.sum(dy * x * x * qq) / 1.1
        if dd1 is not None:
            dbeta += np.sum(dd1 * x * qq * (2 + beta * x * (1 - 2 * q))) / 1.1
        rho = self.params["rho"][0]
        self.grads["rho"] += dbeta * 0.5 * (1 + np.tanh(0.5 * rho))  # dbeta/drho = sigmoid(rho)

    def forward(self, x):
        return self.derivatives(x)[0], x

    def backward(self, dy, cache):
        x = cache
        self.param_backward(x, dy)
        return dy * self.derivatives(x)[1]

    def __repr__(self):
        return "LipSwish()"


class Sine(Module):
    r"""Sine activation, 1-Lipschitz (used in ImpFlow's toy experiments).

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


LIPSCHITZ_ACTIVATIONS = {"lipswish": LipSwish, "sine": Sine}


class LipschitzMLP(Module):
    r"""MLP with spectrally normalised layers and 1-Lipschitz activations: Lip(g) <= c.

    Forward:  h_0 = x;  a_k = h_{k-1} @ W_hat_k + b_k;  h_k = phi(a_k)  (k < K);  g = a_K
    Each ``W_hat_k`` has spectral norm <= c and phi is 1-Lipschitz, so ``Lip(g) <= c`` (the
    last layer carries c, the others could carry 1; all carry c, as in the i-ResNet code).

    Jacobian-vector products in forward mode (``jvp_forward``): the rows of ``V`` (N, m, D)
    are tangents at x, propagated alongside the values:
              T_0 = V;  M_k = T_{k-1} @ W_hat_k;  T_k = M_k * phi'(a_k);  G = M_K
    so G[n, r] = (J_g(x_n) V[n, r]^T)^T; with V = I, G = J_g^T (G[n, i, j] = dg_j / dx_i).
    Reverse mode through both the value and the tangent paths (``jvp_backward``), given
    dg (N, D) and dG (N, m, D):
              dM_k = dT_k * phi'(a_k);   dphi'_k = sum_r dT_k[:, r] * M_k[:, r]
              da_k = dh_k * phi'(a_k) + dphi'_k * phi''(a_k)
              dW_hat_k = h_{k-1}^T da_k + sum_{n, r} T_{k-1}[n, r]^T dM_k[n, r]
              dh_{k-1} = da_k @ W_hat_k^T;   dT_{k-1} = dM_k @ W_hat_k^T
    This is how the exact log-det's parameter gradient  tr((I + J_g)^{-1} dJ_g/dtheta)  and
    the Neumann-series gradient of residual flows are computed, by hand.
    """

    def __init__(self, sizes, c=0.9, activation="lipswish", rng=None, dtype=np.float64):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"LipschitzMLP: expected sizes (n_in, ..., n_out), got {sizes!r}")
        if activation not in LIPSCHITZ_ACTIVATIONS:
            raise ValueError(f"LipschitzMLP: expected activation in "
                             f"{sorted(LIPSCHITZ_ACTIVATIONS)}, got {activation!r}")
        self.c = _check_lipschitz_bound(c, "LipschitzMLP")
        rng = np.random.default_rng() if rng is None else rng
        self.sizes = tuple(int(s) for s in sizes)
        self.linears = [SpectralLinear(i, o, c, rng, dtype)
                        for i, o in zip(self.sizes[:-1], self.sizes[1:])]
        self.acts = [LIPSCHITZ_ACTIVATIONS[activation](dtype=dtype) for _ in self.linears[:-1]]

    def update(self, n=1):
        """``n`` power-iteration steps in every layer; returns the layers' sigma estimates."""
        return [layer.update(n) for layer in self.linears]

    def weights(self):
        """Every layer's ``(W_hat, s, u, v)`` (``SpectralLinear.weight``). A solver that
        evaluates g many times at the same parameters computes them once and passes them to
        ``value`` (in evaluation mode each is an SVD)."""
        return [layer.weight() for layer in self.linears]

    def value(self, x, weights=None):
        """g(x) alone (no cache, no derivatives): what a fixed-point iteration evaluates."""
        weights = self.weights() if weights is None else weights
        h = x
        for k, (layer, (W_hat, _, _, _)) in enumerate(zip(self.linears, weights)):
            h = h @ W_hat + layer.params["b"]
            if k < len(self.acts):
                h = self.acts[k].forward(h)[0]
        return h

    # ------------------------------------------------------------------ forward mode
    def jvp_forward(self, x, V=None, weights=None):
        r"""g(x) (N, D_out), G (N, m, D_out) (None if V is None), and the cache."""
        weights = self.weights() if weights is None else weights
        h, T = x, V
        caches = []
        for k, (layer, (W_hat, s, u, v)) in enumerate(zip(self.linears, weights)):
            a = h @ W_hat + layer.params["b"]
            # (N, m, I) -> (N m, I): one BLAS product instead of N small ones
            M = None if T is None else (T.reshape(-1, T.shape[2]) @ W_hat).reshape(
                T.shape[0], T.shape[1], -1)
            if k == len(self.linears) - 1:
                caches.append((h, T, (W_hat, s, u, v), a, None, None, M))
                return a, M, caches
            y, d1, d2 = self.acts[k].derivatives(a)
            caches.append((h, T, (W_hat, s, u, v), a, d1, d2, M))
            h = y
            T = None if M is None else M * d1[:, None, :]

    def jvp_backward(self, dg, dG, caches, params=True):
        r"""Reverse mode through ``jvp_forward``: returns dx and, if ``params``, adds the
        parameter gradients. ``dg`` or ``dG`` may be None (no gradient on that output)."""
        dh, dT = dg, dG
        for k in reversed(range(len(self.linears))):
            h, T, (W_hat, s, u, v), a, d1, d2, M = caches[k]
            if k == len(self.linears) - 1:
                da, dM = dh, dT
            else:
                dd1 = None
                da = None if dh is None else dh * d1
                dM = None
                if dT is not None:
                    dM = dT * d1[:, None, :]
                    dd1 = np.einsum("nro,nro->no", dT, M)
                    da = dd1 * d2 if da is None else da + dd1 * d2
                if params:
                    self.acts[k].param_backward(a, 0.0 if dh is None else dh, dd1)
            if da is None:
                da = np.zeros_like(a)
            if params:
                layer = self.linears[k]
                dW_hat = h.T @ da
                if dM is not None:  # sum over n and r of T^T dM, as one BLAS product
                    dW_hat += T.reshape(-1, T.shape[2]).T @ dM.reshape(-1, dM.shape[2])
                layer.weight_backward(dW_hat, W_hat, s, u, v)
                layer.grads["b"] += da.sum(axis=0)
            dh = da @ W_hat.T
            # the tangents start at the constant V: no gradient is needed below layer 0
            dT = None if (dM is None or k == 0) else (
                dM.reshape(-1, dM.shape[2]) @ W_hat.T).reshape(dM.shape[0], dM.shape[1], -1)
        return dh

    def vjp(self, dg, caches):
        """w^T J_g(x) for rows w of ``dg`` (N, D_out), no parameter gradients."""
        return self.jvp_backward(dg, None, caches, params=False)

    # ------------------------------------------------------------------ the Module pattern
    def forward(self, x):
        x = check_array(x, "LipschitzMLP", self.sizes[0])
        y, _, caches = self.jvp_forward(x)
        return y, caches

    def backward(self, dy, caches):
        return self.jvp_backward(dy, None, caches)

    def __repr__(self):
        return f"LipschitzMLP({self.sizes}, c={self.c}, {self.acts[0]!r})" if self.acts else \
            f"LipschitzMLP({self.sizes}, c={self.c})"


# ---------------------------------------------------------------------------------------------
# Convolutions on images (N, C, H, W): the conditioners of the image flows
# ---------------------------------------------------------------------------------------------

def matmul(a, b):
    """``a @ b``. The convolutions call their matrix products through this name so that
    ``benchmarks/glow_step.py`` can record and time them (it swaps the name for a recorder)."""
    return a @ b


def im2col(x, k):
    r"""The k x k patches of ``x`` (N, C, H, W), zero-padded by p = k // 2 ("same" size), as
    the rows of one matrix:

        cols[(n, h, w), (i, j, c)] = xp[n, h + i, w + j, c],
        xp = x in channels-last order (N, H, W, C), padded by p on H and W

    Returns ``cols`` of shape (N H W, k k C): one row per output pixel, holding the k x k
    pixels of its patch, each with its C channels. A 1 x 1 patch is the pixel itself, so for
    k = 1 this is just x with the channels last: (N H W, C), no padding.
    """
    n, c, h, w = x.shape
    if k == 1:
        return x.transpose(0, 2, 3, 1).reshape(n * h * w, c)
    p = k // 2
    # Channels last: a row of cols is then k*k runs of C adjacent numbers, which the reshape
    # below copies as blocks (from channels-first it copied runs of k, 12x slower at C = 64).
    xp = np.zeros((n, h + 2 * p, w + 2 * p, c), dtype=x.dtype)
    xp[:, p:p + h, p:p + w, :] = x.transpose(0, 2, 3, 1)
    # patches[n, h, w, i, j, c] = xp[n, h + i, w + j, c]: a view (no copy) whose axes i and j
    # step through xp as h and w do. np.lib.stride_tricks.sliding_window_view makes the same
    # view; its argument handling cost 3% of a Glow step (benchmarks/glow_step.py).
    sn, sh, sw, sc = xp.strides
    patches = np.lib.stride_tricks.as_strided(xp, (n, h, w, k, k, c), (sn, sh, sw, sh, sw, sc),
                                              writeable=False)
    return patches.reshape(n * h * w, k * k * c)


class Conv2d(Module):
    r"""2-D convolution, stride 1, "same" zero padding, odd kernel size k.

    Forward:  y[n, o, h, w] = b[o] + sum_{c, i, j} W[o, c, i, j] xp[n, c, h + i, w + j],
              xp = x zero-padded by p = k // 2 on both sides of H and W;
              computed as one matrix product of the patches:
              cols = im2col(x, k)  (N H W, k k C);   Y = cols @ Wm^T + b  (N H W, O),
              Wm[o, (i, j, c)] = W[o, c, i, j]  (O, k k C);
              y = Y reshaped to (N, H, W, O) and transposed to (N, O, H, W)
    Backward: dY = dy transposed to (N, H, W, O), reshaped to (N H W, O)
              dWm = dY^T @ cols,  dW[o, c, i, j] = dWm[o, (i, j, c)];   db = sum_rows dY
              dx is itself a "same" convolution, of dy with the kernel flipped in space and
              with its channel axes swapped:
                  dx[n, c, h, w] = sum_{o, i, j} Wf[c, o, i, j] dyp[n, o, h + i, w + j],
                  Wf[c, o, i, j] = W[o, c, k - 1 - i, k - 1 - j]
              (each y[., h', w'] used x[., h' + i - p, w' + j - p] with weight W[., ., i, j]);
              so, as the forward pass, one matrix product of patches:
              dx = (im2col(dy, k) @ Wfm^T) reshaped to (N, H, W, C), transposed to (N, C, H, W)

    Shapes: x (N, C, H, W), y (N, O, H, W), W (O, C, k, k), b (O,). The cache is ``cols``
    (and the input shape). ``zero=True`` starts with W = 0, b = 0 (Glow's last conditioner
    layer, so a coupling starts as the identity); otherwise W, b ~ U(-1/sqrt(C k k),
    1/sqrt(C k k)), as ``Linear``.

    References: Dumoulin, Visin (2016), "A guide to convolution arithmetic", arXiv:1603.07285
    (section 4: the transposed convolution); Chellapilla, Puri, Simard (2006), im2col for
    convolutional networks.
    """

    def __init__(self, n_in, n_out, kernel_size=3, rng=None, dtype=np.float64, zero=False):
        super().__init__()
        k = int(kernel_size)
        if k != kernel_size or k < 1 or k % 2 == 0:
            raise ValueError(f"Conv2d: expected an odd positive kernel_size (for 'same' "
                             f"padding), got {kernel_size!r}")
        rng = np.random.default_rng() if rng is None else rng
        fan_in = n_in * k * k
        bound = 1.0 / np.sqrt(fan_in)
        shape = (n_out, n_in, k, k)
        W = np.zeros(shape) if zero else rng.uniform(-bound, bound, shape)
        b = np.zeros(n_out) if zero else rng.uniform(-bound, bound, n_out)
        self.add_param("W", W.astype(dtype))
        self.add_param("b", b.astype(dtype))
        self.n_in, self.n_out, self.k = int(n_in), int(n_out), k

    def forward(self, x):
        x = check_images(x, "Conv2d", self.n_in)
        return self._forward(x)

    def _forward(self, x):
        """``forward`` without the input check, for a caller that checked ``x`` already."""
        n, _, h, w = x.shape
        cols = im2col(x, self.k)
        Wm = self.params["W"].transpose(0, 2, 3, 1).reshape(self.n_out, -1)
        Y = matmul(cols, Wm.T) + self.params["b"]
        y = Y.reshape(n, h, w, self.n_out).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(y), (cols, x.shape)

    def backward(self, dy, cache):
        cols, (n, c, h, w) = cache
        k = self.k
        dY = dy.transpose(0, 2, 3, 1).reshape(-1, self.n_out)
        dWm = matmul(dY.T, cols)
        self.grads["W"] += dWm.reshape(self.n_out, k, k, c).transpose(0, 3, 1, 2)
        self.grads["b"] += dY.sum(axis=0)
        Wf = self.params["W"][:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, O, k, k)
        Wfm = Wf.transpose(0, 2, 3, 1).reshape(c, -1)
        dX = matmul(dY if k == 1 else im2col(dy, k), Wfm.T)  # for k = 1, im2col(dy) is dY
        return np.ascontiguousarray(dX.reshape(n, h, w, c).transpose(0, 3, 1, 2))

    def __repr__(self):
        return f"Conv2d({self.n_in}, {self.n_out}, kernel_size={self.k})"


class ConvNet(Sequential):
    r"""A stack of same-size convolutions with activations between them: the conditioner of
    the image couplings.

    Forward:  h_0 = x;  h_k = act(conv_k(h_{k-1}));  y = conv_K(h_{K-1})
    Backward: the layers' backward passes in reverse order.

    Glow's conditioner is ``ConvNet((C, hidden, hidden, C_out), kernels=(3, 1, 3),
    activation="relu", zero_last=True)``: 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised
    3x3 conv (the coupling then starts as the identity).

    Parameters
    ----------
    channels : sequence of int, ``(C_in, hidden_1, ..., C_out)``
    kernels : sequence of odd int, one per convolution (``len(channels) - 1``)
    activation : {"relu", "leaky_relu", "tanh"}
    zero_last : bool, initialise the last convolution to zero

    Shapes: x (N, C_in, H, W) -> y (N, C_out, H, W).

    References: Kingma, Dhariwal (2018), arXiv:1807.03039, section 3.3.
    """

    def __init__(self, channels, kernels=None, activation="relu", zero_last=False, rng=None,
                 dtype=np.float64):
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        if len(self.channels) < 2:
            raise ValueError(f"ConvNet: expected channels (C_in, ..., C_out), got {channels!r}")
        n_convs = len(self.channels) - 1
        kernels = (3,) * n_convs if kernels is None else tuple(kernels)
        if len(kernels) != n_convs:
            raise ValueError(f"ConvNet: expected {n_convs} kernel sizes (one per convolution), "
                             f"got {kernels!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.layers = []
        for k, (c_in, c_out, size) in enumerate(zip(self.channels[:-1], self.channels[1:],
                                                    kernels)):
            last = k == n_convs - 1
            self.layers.append(Conv2d(c_in, c_out, size, rng, dtype, zero=last and zero_last))
            if not last:
                self.layers.append(make_activation(activation))

    def forward(self, x):
        x = check_images(x, "ConvNet", self.channels[0])
        return self._forward(x)

    def _forward(self, x):
        """``forward`` without the input check, for a caller that checked ``x`` already."""
        caches = []
        for layer in self.layers:
            x, cache = layer._forward(x) if isinstance(layer, Conv2d) else layer.forward(x)
            caches.append(cache)
        return x, caches

    def __repr__(self):
        kernels = tuple(layer.k for layer in self.layers if isinstance(layer, Conv2d))
        act = f", {self.layers[1]!r}" if len(self.layers) > 1 else ""
        return f"ConvNet({self.channels}, kernels={kernels}{act})"


class ResNet(Module):
    r"""RealNVP's residual conditioner for images: a 3x3 convolution in, ``n_blocks`` residual
    blocks, an activation and a 3x3 convolution out.

    Forward:  h_0 = conv_in(x)                                        (C_in -> hidden)
              a_k = act(h_{k-1});   r_k = conv_k2(act(conv_k1(a_k)));   h_k = h_{k-1} + r_k
                                                                       (k = 1..K, hidden)
              a_out = act(h_K);     y = conv_out(a_out)                (hidden -> C_out)
    Backward: da_out = conv_out.backward(dy);   dh_K = act.backward(da_out)
              dh_{k-1} = dh_k + act.backward(branch_k.backward(dh_k))  (k = K..1: the skip
              carries dh_k unchanged, the branch adds its own term)
              dx = conv_in.backward(dh_0)

    Every convolution is a ``Conv2d`` with kernel 3 and "same" padding, so H and W never
    change. Each branch ``conv_k2(act(conv_k1(.)))`` is a ``ConvNet((hidden, hidden, hidden))``
    (``blocks[k - 1]``), which keeps its parameters and their backward pass. The skip
    connections let the gradient reach ``conv_in`` through the sum rather than through every
    block, which is what makes deeper conditioners trainable.

    With ``zero_last`` (the default) ``conv_out`` starts at W = 0, b = 0, so y = 0: a coupling
    built on this net starts as the identity.

    RealNVP's networks also use batch normalisation and weight normalisation inside the
    blocks; they are left out here (a conditioner need not be invertible, and the flow
    stays a plain function of each example).

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels (for an affine coupling on C channels: C and 2 C).
    hidden : int
        Channels inside the network.
    n_blocks : int, >= 0
        Number of residual blocks K.
    activation : {"relu", "leaky_relu", "tanh"}
    zero_last : bool
        Initialise ``conv_out`` to zero.
    rng : numpy.random.Generator, optional
    dtype : float dtype of the parameters

    Shapes: x (N, C_in, H, W) -> y (N, C_out, H, W); every h_k, a_k, r_k (N, hidden, H, W).
    ``_forward(x) -> (y, cache)`` skips the input check (a coupling layer checked its input);
    ``backward(dy, cache) -> dx`` adds the parameter gradients, as ``ConvNet``'s.

    References
    ----------
    Dinh, Sohl-Dickstein, Bengio (2016), "Density estimation using Real NVP",
    arXiv:1605.08803, section 4.1; He, Zhang, Ren, Sun (2016), "Deep residual learning for
    image recognition", arXiv:1512.03385.
    """

    def __init__(self, c_in, c_out, hidden=64, n_blocks=2, activation="relu", zero_last=True,
                 rng=None, dtype=np.float64):
        super().__init__()
        for name, value, low in (("c_in", c_in, 1), ("c_out", c_out, 1), ("hidden", hidden, 1),
                                 ("n_blocks", n_blocks, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"ResNet: expected an integer {name} >= {low}, got {value!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.c_in, self.c_out = int(c_in), int(c_out)
        self.hidden, self.n_blocks = int(hidden), int(n_blocks)
        self.activation = activation
        self.conv_in = Conv2d(self.c_in, self.hidden, 3, rng, dtype)
        self.blocks = [ConvNet((self.hidden, self.hidden, self.hidden), (3, 3), activation,
                               rng=rng, dtype=dtype) for _ in range(self.n_blocks)]
        # no parameters, and its cache is returned: one instance serves every position
        self.act = make_activation(activation)
        self.conv_out = Conv2d(self.hidden, self.c_out, 3, rng, dtype, zero=zero_last)

    def forward(self, x):
        x = check_images(x, "ResNet", self.c_in)
        return self._forward(x)

    def _forward(self, x):
        """``forward`` without the input check, for a caller that checked ``x`` already."""
        h, cache_in = self.conv_in._forward(x)
        block_caches = []
        for block in self.blocks:
            a, cache_a = self.act.forward(h)
            r, cache_r = block._forward(a)
            h = h + r
            block_caches.append((cache_a, cache_r))
        a_out, cache_a_out = self.act.forward(h)
        y, cache_out = self.conv_out._forward(a_out)
        return y, (cache_in, block_caches, cache_a_out, cache_out)

    def backward(self, dy, cache):
        cache_in, block_caches, cache_a_out, cache_out = cache
        da_out = self.conv_out.backward(dy, cache_out)
        dh = self.act.backward(da_out, cache_a_out)
        for block, (cache_a, cache_r) in zip(reversed(self.blocks), reversed(block_caches)):
            dh = dh + self.act.backward(block.backward(dh, cache_r), cache_a)
        return self.conv_in.backward(dh, cache_in)

    def __repr__(self):
        return (f"ResNet({self.c_in}, {self.c_out}, hidden={self.hidden}, "
                f"n_blocks={self.n_blocks}, activation={self.activation!r})")
