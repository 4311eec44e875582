r"""Convolutions on images (N, C, H, W): the conditioners of the image flows."""
import numpy as np

from ..core import Module, check_images
from .basic import Sequential, make_activation


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
