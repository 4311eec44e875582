r"""Sequential passes in Numba, each beside the plain NumPy loop it must equal.

The only truly sequential loop in the library is the autoregressive one: MAF's inverse
(sampling) and IAF's forward (density of a point IAF did not generate, ``IAF = Inverse(MAF)``)
solve for the features one at a time, in the MADE's order,

    x_{p_k} = z_{p_k} * exp(alpha_{p_k}(x)) + mu_{p_k}(x),   k = 0, ..., D-1,

where ``mu_{p_k}`` and ``alpha_{p_k}`` depend only on ``x_{p_0}, ..., x_{p_{k-1}}``, already known.

``maf_inverse_reference`` is the textbook loop: D full MADE passes (D times the cost of
one). ``maf_inverse`` computes the same numbers in about the cost of ONE pass:

* hidden units are sorted by degree, so once ``x_{p_0..p_k}`` are known every hidden unit of
  degree k+1 (in every layer, taken layer by layer) has all its inputs: it is final, and its
  contribution is added to the pre-activations of the next layer straight away;
* with units sorted by degree the masked weight matrices are block triangular: a unit of
  degree d feeds only the units of degree >= d of the next hidden layer (> d for the
  outputs), a contiguous range of columns, and the zero blocks are never touched;
* the batch is processed in tiles of ``TILE`` examples, so each weight row loaded from memory
  is used for ``TILE`` examples before the next one; tiles run in parallel (``prange``).

So every (unmasked) weight is used once per example, as in one forward pass of the MADE.
Compiled with ``cache=True``: the first call in a fresh environment compiles (seconds; see
the README); later processes load the compiled code from ``__pycache__``.
"""
import numpy as np
from numba import njit, prange

from .nn import LeakyReLU, MaskedLinear, ReLU, Tanh

TILE = 32  # examples per tile (a multiple of the SIMD width; see benchmarks/autoregressive.py)
_ACT_CODES = {Tanh: 0, ReLU: 1, LeakyReLU: 2}


def maf_inverse_reference(made, z, s_max):
    r"""MAF's inverse by the definition: D full MADE passes (the readable version).

    For k = 0..D-1, with i = p_k the k-th feature of ``made.order``:

        (mu, r) = MADE(x)        (x_i = 0 for the features not solved yet: the MADE's
                                  masks make mu_i and r_i ignore them)
        alpha_i = s_max * tanh(r_i / s_max)
        x_i     = z_i * exp(alpha_i) + mu_i
        logdet += alpha_i

    Parameters
    ----------
    made : nn.MADE
    z : ndarray (N, D)
    s_max : float, the bound of the log-scale

    Returns
    -------
    x : ndarray (N, D);  logdet : ndarray (N,), log|det dx/dz| = sum_i alpha_i
    """
    from .bijectors.coupling import soft_bound  # here: bijectors imports this module

    n, dim = z.shape
    x = np.zeros_like(z)
    logdet = np.zeros(n, dtype=z.dtype)
    for i in made.order:
        out, _ = made._forward(x)
        alpha = soft_bound(out[:, dim + i], s_max)
        x[:, i] = z[:, i] * np.exp(alpha) + out[:, i]
        logdet += alpha
    return x, logdet


def _pack(made, dtype):
    r"""The MADE's masked weights and biases with its units in the kernel's order, flattened.

    Inputs are put in generation order (row k of the first matrix is feature ``order[k]``),
    hidden units sorted by degree (a stable sort: ``MADE``'s degrees are sorted already, so
    this is the identity there), outputs as [mu in generation order, alpha in generation
    order]. ``lo[l, d]`` is the number of units of layer l with degree < d, so the units of
    degree d are ``lo[l, d]:lo[l, d + 1]``.
    """
    dim = made.dim
    degrees = made.degrees
    perms = [made.order]
    perms += [np.argsort(deg, kind="stable") for deg in degrees[1:-1]]
    perms.append(np.concatenate([made.order, dim + made.order]))
    sizes = np.array([deg.size for deg in degrees], dtype=np.int64)
    lo = np.zeros((len(degrees), dim + 1), dtype=np.int64)
    for layer, deg in enumerate(degrees[1:-1], start=1):
        lo[layer] = np.searchsorted(np.sort(deg), np.arange(dim + 1), side="left")
    weights, biases = [], []
    for k, layer in enumerate(made.masked_layers):
        WM = layer.masked_weight()[np.ix_(perms[k], perms[k + 1])]
        weights.append(WM.astype(dtype).ravel())
        biases.append(layer.params["b"][perms[k + 1]].astype(dtype))
    w_off = np.cumsum([0] + [w.size for w in weights]).astype(np.int64)
    b_off = np.cumsum([0] + [b.size for b in biases]).astype(np.int64)
    return sizes, lo, np.concatenate(weights), w_off, np.concatenate(biases), b_off


def maf_inverse(made, z, s_max, tile=TILE):
    r"""MAF's inverse in about the cost of one MADE pass (Numba): the same numbers as
    ``maf_inverse_reference`` up to round-off. Supports float32 and float64 (``z``'s dtype).

    Returns ``(x (N, D), logdet (N,))``.
    """
    z = np.ascontiguousarray(z)
    acts = [layer for layer in made.layers if not isinstance(layer, MaskedLinear)]
    act = _ACT_CODES[type(acts[0])] if acts else 0
    leak = acts[0].alpha if acts and isinstance(acts[0], LeakyReLU) else 0.0
    sizes, lo, w, w_off, b, b_off = _pack(made, z.dtype)
    return _maf_inverse_kernel(z, made.order.astype(np.int64), sizes, lo, w, w_off, b, b_off,
                               act, leak, float(s_max), int(tile))


@njit(cache=True)
def _activate(v, act, leak):
    if act == 0:
        return np.tanh(v)
    if act == 1:
        return v if v > 0 else 0.0 * v
    return v if v > 0 else leak * v


@njit(cache=True)
def _add_row(buf, dst, width, c0, c1, n_rows, v, w, w_row):
    r"""buf[dst + t * width + c] += v[t] * w[w_row + c] for c in c0..c1-1, t < n_rows: one
    unit's contribution to a contiguous block of the next layer, for every example of a tile.
    """
    for t in range(n_rows):
        vt = v[t]
        row = dst + t * width
        for c in range(c0, c1):
            buf[row + c] += vt * w[w_row + c]


@njit(cache=True, parallel=True)
def _maf_inverse_kernel(z, order, sizes, lo, w, w_off, b, b_off, act, leak, s_max, tile):
    n, dim = z.shape
    n_layers = sizes.shape[0]  # input, hidden layers, output
    out_layer = n_layers - 1
    x = np.empty_like(z)
    logdet = np.zeros(n, dtype=z.dtype)
    # unit offsets of each non-input layer inside one tile's pre-activation buffer
    u_off = np.zeros(n_layers, dtype=np.int64)
    for layer in range(2, n_layers):
        u_off[layer] = u_off[layer - 1] + sizes[layer - 1]
    n_units = u_off[out_layer] + sizes[out_layer]
    n_tiles = (n + tile - 1) // tile
    for it in prange(n_tiles):
        t0 = it * tile
        rows = min(tile, n - t0)
        # pre-activations of every layer after the input, [t, unit] per layer, start at b
        buf = np.empty(rows * n_units, dtype=z.dtype)
        for layer in range(1, n_layers):
            width = sizes[layer]
            base = u_off[layer] * rows
            for t in range(rows):
                for c in range(width):
                    buf[base + t * width + c] = b[b_off[layer - 1] + c]
        v = np.empty(rows, dtype=z.dtype)
        out = u_off[out_layer] * rows
        for k in range(dim):
            d = k + 1  # the degree of the feature solved now
            i = order[k]
            # mu and alpha of this feature are final: every unit they see has degree < d
            for t in range(rows):
                mu = buf[out + t * 2 * dim + k]
                alpha = s_max * np.tanh(buf[out + t * 2 * dim + dim + k] / s_max)
                xi = z[t0 + t, i] * np.exp(alpha) + mu
                x[t0 + t, i] = xi
                logdet[t0 + t] += alpha
                v[t] = xi
            if k == dim - 1:
                break
            # the input of degree d feeds units of degree >= d (outputs: > d)
            _feed(buf, u_off, sizes, lo, w, w_off, 0, k, d, dim, rows, v, out_layer)
            # hidden units of degree d are final now, layer by layer
            for layer in range(1, out_layer):
                width = sizes[layer]
                base = u_off[layer] * rows
                for j in range(lo[layer, d], lo[layer, d + 1]):
                    for t in range(rows):
                        h = _activate(buf[base + t * width + j], act, leak)
                        buf[base + t * width + j] = h
                        v[t] = h
                    _feed(buf, u_off, sizes, lo, w, w_off, layer, j, d, dim, rows, v,
                          out_layer)
    return x, logdet


@njit(cache=True)
def _feed(buf, u_off, sizes, lo, w, w_off, layer, j, d, dim, rows, v, out_layer):
    r"""Add unit j (degree d) of ``layer``, whose values over the tile are ``v``, into the
    pre-activations of the next layer, skipping the columns its mask zeroes."""
    nxt = layer + 1
    width = sizes[nxt]
    dst = u_off[nxt] * rows
    w_row = w_off[layer] + j * width
    if nxt == out_layer:  # outputs of generation rank r have degree r + 1 > d: r >= d
        _add_row(buf, dst, width, d, dim, rows, v, w, w_row)
        _add_row(buf, dst, width, dim + d, 2 * dim, rows, v, w, w_row)
    else:
        _add_row(buf, dst, width, lo[nxt, d], width, rows, v, w, w_row)
