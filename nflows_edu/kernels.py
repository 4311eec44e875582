r"""Sequential passes in Numba; the plain NumPy loops they must equal are beside their
classes (``maf_inverse_reference`` in ``bijectors/autoregressive.py``,
``spline_ar_inverse_reference`` in ``bijectors/spline_autoregressive.py``), and this module
holds only the Numba code (``kernels.maf_inverse_reference`` is a re-export, for notebook 05).

The only truly sequential loop in the library is the autoregressive one: MAF's inverse
(sampling) and IAF's forward (density of a point IAF did not generate, ``IAF = Inverse(MAF)``)
solve for the features one at a time, in the MADE's order,

    x_{p_k} = z_{p_k} * exp(alpha_{p_k}(x)) + mu_{p_k}(x),   k = 0, ..., D-1,

where ``mu_{p_k}`` and ``alpha_{p_k}`` depend only on ``x_{p_0}, ..., x_{p_{k-1}}``, already known;
and ``SplineAutoregressive``'s inverse, the same loop with
``x_{p_k} = g^{-1}(z_{p_k}; theta_{p_k}(x))``, a rational-quadratic spline's inverse
(``spline_ar_inverse``, tested against ``spline_ar_inverse_reference``). Both run in one kernel
(``_autoregressive_kernel``): only the step that solves for one feature differs.

``maf_inverse_reference`` is the textbook loop: D full MADE passes (D times the cost of
one). ``maf_inverse`` computes the same numbers in about the cost of ONE pass:

* hidden units are sorted by degree, so once ``x_{p_0..p_k}`` are known every hidden unit of
  degree k+1 (in every layer, taken layer by layer) has all its inputs: it is final, and its
  contribution is added to the pre-activations of the next layer straight away;
* with units sorted by degree the masked weight matrices are block triangular: a unit of
  degree d feeds only the units of degree >= d of the next hidden layer (> d for the
  outputs), a contiguous range of columns, and the zero blocks are never touched;
* the batch is processed in tiles of ``TILE`` examples, so each weight row loaded from memory
  is used for ``TILE`` examples before the next one. The tiles are independent, so they run
  in parallel (``prange``) on as many threads as the BLAS library uses for the parallel
  direction's matrix products (``threads.blas_thread_count()``: one inside a
  ``blas_threads(1)`` block, the library's default otherwise), so the two directions get the
  same cores and their ratio does not depend on how many the machine has;
* the loops stay long and whole for the vector units, which matters most in float32 (twice
  as many numbers per register, so a loop over a given row has half as many iterations): the
  outputs are packed as (mu, alpha) pairs so the outputs still to be fed are one block (one
  loop, not two); each block of columns starts at a multiple of 64 bytes (the columns added
  in front belong to units of lower degree, whose masked weights are exactly 0, so they get
  +0 and the numbers do not change), so the loop runs on whole registers rather than
  finishing in narrow remainder loops; the scalars come in z's dtype, so a float32 pass
  computes its tanh and exp in float32, as the NumPy reference does. Measured in one run
  (CPU time of the 5 sequential passes of ``maf(64, hidden=(256, 256))`` at N = 1024 over
  its ``log_prob``), these and the two examples at a time of ``_feed`` took the ratio from
  2.16 to 1.58 in float32 and from 1.41 to 1.12 in float64.

So every (unmasked) weight is used once per example, as in one forward pass of the MADE.
Compiled with ``cache=True``: the first call in a fresh environment compiles (seconds; see
the README); later processes load the compiled code from ``__pycache__``.
"""
import numba
import numpy as np
from numba import njit, prange

from .nn import LeakyReLU, MaskedLinear, ReLU, Tanh
from .threads import blas_thread_count

# the textbook loop, kept importable here for notebook 05, which times it beside the kernel
from .bijectors.autoregressive import maf_inverse_reference  # noqa: E402,F401

TILE = 32  # examples per tile (a multiple of the SIMD width; see benchmarks/autoregressive.py)
_ACT_CODES = {Tanh: 0, ReLU: 1, LeakyReLU: 2}


def _pack(made, dtype):
    r"""The MADE's masked weights and biases with its units in the kernel's order, flattened.

    Inputs are put in generation order (row k of the first matrix is feature ``order[k]``),
    hidden units sorted by degree (a stable sort: ``MADE``'s degrees are sorted already, so
    this is the identity there), outputs as groups of the P = ``made.n_params`` numbers of a
    feature (pairs (mu, alpha) for MAF) in generation order (so the outputs of generation
    rank >= r are one block of columns, P r .. P D - 1). ``lo[l, d]``
    is the number of units of layer l with degree < d, so the units of degree d are
    ``lo[l, d]:lo[l, d + 1]``.
    """
    dim = made.dim
    degrees = made.degrees
    perms = [made.order]
    perms += [np.argsort(deg, kind="stable") for deg in degrees[1:-1]]
    perms.append(np.stack([p * dim + made.order for p in range(made.n_params)], axis=1).ravel())
    sizes = np.array([deg.size for deg in degrees], dtype=np.int64)
    lo = np.zeros((len(degrees), dim + 1), dtype=np.int64)
    for layer, deg in enumerate(degrees[1:-1], start=1):
        lo[layer] = np.searchsorted(np.sort(deg), np.arange(dim + 1), side="left")
    # skip the identity permutations (MADE's hidden degrees are sorted): copies cost time
    perms = [None if np.array_equal(p, np.arange(p.size)) else p for p in perms]
    weights, biases = [], []
    for k, layer in enumerate(made.masked_layers):
        WM, b = layer.masked_weight(), layer.params["b"]
        if perms[k] is not None:
            WM = WM[perms[k]]
        if perms[k + 1] is not None:
            WM, b = WM[:, perms[k + 1]], b[perms[k + 1]]
        weights.append(WM.astype(dtype, copy=False).ravel())
        biases.append(b.astype(dtype, copy=False))
    w_off = np.cumsum([0] + [w.size for w in weights]).astype(np.int64)
    b_off = np.cumsum([0] + [b.size for b in biases]).astype(np.int64)
    return sizes, lo, np.concatenate(weights), w_off, np.concatenate(biases), b_off


def maf_inverse(made, z, s_max, tile=TILE, align=None, threads=None):
    r"""MAF's inverse in about the cost of one MADE pass (Numba): the same numbers as
    ``maf_inverse_reference`` up to round-off. Supports float32 and float64 (``z``'s dtype),
    and computes in that dtype.

    ``align``: the updates of a row of pre-activations start at a multiple of this many
    columns (default: 64 bytes, 16 float32 or 8 float64); any value gives the same numbers.

    ``threads``: how many threads share the tiles (default: as many as BLAS uses now, see
    ``threads.blas_thread_count``; at most one per tile and at most Numba's
    ``NUMBA_NUM_THREADS``). Every example is computed by one thread, so any count gives the
    same numbers.

    Returns ``(x (N, D), logdet (N,))``.
    """
    # the scalars in z's dtype: a Python float would make every float32 tanh and exp in the
    # kernel a float64 one
    return _run_kernel(made, z, z.dtype.type(s_max), np.empty(0), tile, align, threads)


def _run_kernel(made, z, s_max, spline, tile, align, threads):
    r"""Pack ``made`` (``_pack``), set the threads and call ``_autoregressive_kernel`` (MAF's
    step with ``s_max`` if ``spline`` is empty, else the spline's with those options);
    ``maf_inverse`` explains ``tile``, ``align`` and ``threads``."""
    z = np.ascontiguousarray(z)
    acts = [layer for layer in made.layers if not isinstance(layer, MaskedLinear)]
    act = _ACT_CODES[type(acts[0])] if acts else 0
    leak = acts[0].alpha if acts and isinstance(acts[0], LeakyReLU) else 0.0
    align = 64 // z.dtype.itemsize if align is None else int(align)
    sizes, lo, w, w_off, b, b_off = _pack(made, z.dtype)
    n_tiles = -(-z.shape[0] // int(tile))
    threads = blas_thread_count() if threads is None else int(threads)
    threads = max(1, min(threads, n_tiles, numba.config.NUMBA_NUM_THREADS))
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return _autoregressive_kernel(z, made.order.astype(np.int64), sizes, lo, w, w_off, b,
                                      b_off, act, z.dtype.type(leak), s_max, spline, int(tile),
                                      align)
    finally:
        numba.set_num_threads(before)


@njit(cache=True)
def _activate(v, act, leak):
    if act == 0:
        return np.tanh(v)
    return v if v > 0 else leak * v  # ReLU: leak = 0


@njit(cache=True)
def _feed(buf, src, src_width, j0, j1, dst, width, c0, c1, rows, w, w_base):
    r"""Add units j0..j1-1 of one layer into columns c0..c1-1 of the next, for every example
    of the tile:

        buf[dst + t * width + c] += sum_j buf[src + t * src_width + j] * w[w_base + j * width + c]

    Four units at a time, so each pre-activation is loaded and stored once per four weights
    rather than once per weight (2-3x faster: the loop was bound by those loads and stores);
    and two examples at a time, so each weight loaded serves both (CPU time of the 5 passes
    at D = 64 in float32: 27.0 -> 24.8 ms; float64: 43.4 -> 37.1 ms).
    """
    m = c1 - c0
    j = j0
    while j < j1:
        if j + 4 <= j1:
            # views, and loops from 0: with loops from c0 over offset indices LLVM does not
            # vectorize (numba's negative-index handling gets in the way): ~8x slower
            w0 = w[w_base + j * width + c0:w_base + j * width + c1]
            w1 = w[w_base + (j + 1) * width + c0:w_base + (j + 1) * width + c1]
            w2 = w[w_base + (j + 2) * width + c0:w_base + (j + 2) * width + c1]
            w3 = w[w_base + (j + 3) * width + c0:w_base + (j + 3) * width + c1]
            t = 0
            while t + 2 <= rows:  # examples t and t + 1
                a = src + t * src_width + j
                a0, a1, a2, a3 = buf[a], buf[a + 1], buf[a + 2], buf[a + 3]
                a += src_width
                b0, b1, b2, b3 = buf[a], buf[a + 1], buf[a + 2], buf[a + 3]
                row = buf[dst + t * width + c0:dst + t * width + c1]
                row2 = buf[dst + (t + 1) * width + c0:dst + (t + 1) * width + c1]
                for c in range(m):
                    u0, u1, u2, u3 = w0[c], w1[c], w2[c], w3[c]
                    row[c] += a0 * u0 + a1 * u1 + a2 * u2 + a3 * u3
                    row2[c] += b0 * u0 + b1 * u1 + b2 * u2 + b3 * u3
                t += 2
            if t < rows:  # the last example of an odd tile
                a = src + t * src_width + j
                a0, a1, a2, a3 = buf[a], buf[a + 1], buf[a + 2], buf[a + 3]
                row = buf[dst + t * width + c0:dst + t * width + c1]
                for c in range(m):
                    row[c] += a0 * w0[c] + a1 * w1[c] + a2 * w2[c] + a3 * w3[c]
            j += 4
        else:
            w0 = w[w_base + j * width + c0:w_base + j * width + c1]
            for t in range(rows):
                a0 = buf[src + t * src_width + j]
                row = buf[dst + t * width + c0:dst + t * width + c1]
                for c in range(m):
                    row[c] += a0 * w0[c]
            j += 1


@njit(cache=True)
def _unit_offsets(sizes):
    """Offsets of each layer's units inside one tile's buffer (the input layer first), and
    the number of units in all."""
    u_off = np.zeros(sizes.shape[0], dtype=np.int64)
    for layer in range(1, sizes.shape[0]):
        u_off[layer] = u_off[layer - 1] + sizes[layer - 1]
    return u_off, u_off[-1] + sizes[-1]


@njit(cache=True)
def _tile_buffer(z, rows, sizes, u_off, n_units, b, b_off):
    """One tile's buffer: per layer a (rows, width) block: the inputs in generation order,
    then the pre-activations of every later layer (activated in place once final), started
    at the biases b."""
    buf = np.zeros(rows * n_units, dtype=z.dtype)
    for layer in range(1, sizes.shape[0]):
        width = sizes[layer]
        base = u_off[layer] * rows
        for t in range(rows):
            for c in range(width):
                buf[base + t * width + c] = b[b_off[layer - 1] + c]
    return buf


@njit(cache=True)
def _feed_degree(buf, k, rows, sizes, lo, u_off, w, w_off, act, leak, align):
    r"""Once input k (the k-th feature of the order, degree d = k + 1) is in ``buf``: the units
    of degree d, layer by layer: the input k, then every hidden unit of degree d (final now:
    all its inputs have degree <= d). Each feeds the units of degree >= d of the next hidden
    layer, or the outputs of degree > d (the outputs of generation rank r >= d, P of them
    per feature), a contiguous block of columns. The block is started at a multiple of
    ``align`` columns: the few columns added in front are units of lower degree, whose
    masked weights are exactly 0, so they get +0."""
    d = k + 1
    out_layer = sizes.shape[0] - 1
    n_out = sizes[out_layer]
    n_params = n_out // sizes[0]  # P outputs per feature
    for layer in range(out_layer):
        j0 = k if layer == 0 else lo[layer, d]
        j1 = k + 1 if layer == 0 else lo[layer, d + 1]
        width = sizes[layer]
        src = u_off[layer] * rows
        if layer > 0:
            for t in range(rows):
                for j in range(j0, j1):
                    a = src + t * width + j
                    buf[a] = _activate(buf[a], act, leak)
        nxt = layer + 1
        if nxt == out_layer:
            c0 = n_params * d - (n_params * d) % align
            _feed(buf, src, width, j0, j1, u_off[nxt] * rows, n_out, c0, n_out, rows, w,
                  w_off[layer])
        else:
            c0 = lo[nxt, d] - lo[nxt, d] % align
            _feed(buf, src, width, j0, j1, u_off[nxt] * rows, sizes[nxt], c0, sizes[nxt],
                  rows, w, w_off[layer])


@njit(cache=True, parallel=True)
def _autoregressive_kernel(z, order, sizes, lo, w, w_off, b, b_off, act, leak, s_max, spline,
                           tile, align):
    r"""The sequential inverse of an autoregressive layer, tile by tile: feature by feature in
    the order, solve for x_i from z_i and the P numbers theta_i of feature i (final once the
    features before i are in), then feed the new units forward (``_feed_degree``).

    The step is MAF's affine one, ``x_i = z_i exp(alpha_i) + mu_i`` with theta_i = (mu_i, r_i)
    and alpha_i = s_max tanh(r_i / s_max), when ``spline`` is empty; else the spline's
    inverse (``_rq_inverse_point``), with ``spline`` = (K, B, m_w, m_h, m_d, shift).
    """
    n, dim = z.shape
    n_params = sizes[-1] // dim
    x = np.empty_like(z)
    logdet = np.zeros(n, dtype=z.dtype)
    u_off, n_units = _unit_offsets(sizes)
    n_tiles = (n + tile - 1) // tile
    n_knots = int(spline[0]) + 1 if spline.size else 0
    for it in prange(n_tiles):  # the tiles are independent: one thread each at a time
        t0 = it * tile
        rows = min(tile, n - t0)
        buf = _tile_buffer(z, rows, sizes, u_off, n_units, b, b_off)
        out = u_off[-1] * rows
        xk = np.empty(n_knots)  # the spline's knots (scratch)
        yk = np.empty(n_knots)
        for k in range(dim):
            i = order[k]
            # its parameters are final: every unit they see has degree < k + 1
            for t in range(rows):
                at = out + (t * dim + k) * n_params
                if spline.size == 0:
                    alpha = s_max * np.tanh(buf[at + 1] / s_max)
                    x[t0 + t, i] = z[t0 + t, i] * np.exp(alpha) + buf[at]
                    logdet[t0 + t] += alpha
                else:
                    x_i, logdet_i = _rq_inverse_point(np.float64(z[t0 + t, i]),
                                                      buf[at:at + n_params], spline, xk, yk)
                    x[t0 + t, i] = x_i
                    logdet[t0 + t] += logdet_i
                buf[t * dim + k] = x[t0 + t, i]
            if k == dim - 1:
                break
            _feed_degree(buf, k, rows, sizes, lo, u_off, w, w_off, act, leak, align)
    return x, logdet


# ------------------------------------------------------- autoregressive rational-quadratic spline
def spline_ar_inverse(made, z, n_bins, options, tile=TILE, align=None, threads=None):
    r"""``SplineAutoregressive``'s inverse in about the cost of one MADE pass (Numba), as
    ``maf_inverse`` does it for MAF (the same packing, tiles, threads and ``align``), with
    the spline's inverse evaluated in the kernel (``_rq_inverse_point``): the same numbers as
    ``spline_ar_inverse_reference`` up to round-off.

    The MADE runs in ``z``'s dtype (float32 or float64); the spline of each point is
    evaluated in float64 and its result stored in ``z``'s dtype.

    Arguments and results (z (N, D) -> x (N, D), logdet (N,)) as the reference's.
    """
    bound, min_width, min_height, min_derivative = (float(v) for v in options)
    shift = float(np.log(np.expm1(1 - min_derivative)))  # softplus(0 + shift) = 1 - m_d
    spline = np.array([n_bins, bound, min_width, min_height, min_derivative, shift])
    return _run_kernel(made, z, z.dtype.type(0), spline, tile, align, threads)


@njit(cache=True)
def _knots(theta, first, K, bound, minimum, knots):
    r"""Fill ``knots`` (K + 1,) from the unnormalised sizes ``theta[first:first + K]``:

        q = softmax(u);   w = m + (1 - K m) q;   knots_j = -B + 2B (w_0 + ... + w_{j-1})

    with knots_0 = -B and knots_K = B exactly (``bijectors.spline.spline_knots``)."""
    top = np.float64(theta[first])
    for j in range(1, K):
        top = max(top, np.float64(theta[first + j]))
    total = 0.0
    for j in range(K):
        total += np.exp(np.float64(theta[first + j]) - top)
    knots[0] = -bound
    cumulative = 0.0
    for j in range(K - 1):
        q = np.exp(np.float64(theta[first + j]) - top) / total
        cumulative += minimum + (1 - K * minimum) * q
        knots[j + 1] = -bound + 2 * bound * cumulative
    knots[K] = bound


@njit(cache=True)
def _knot_derivative(theta, K, k, min_derivative, shift):
    """d_k: 1 at the ends (k = 0 or K), else m_d + softplus(ud_{k-1} + shift)."""
    if k == 0 or k == K:
        return 1.0
    u = np.float64(theta[2 * K + k - 1]) + shift
    return min_derivative + max(u, 0.0) + np.log1p(np.exp(-abs(u)))  # softplus, stable


@njit(cache=True)
def _rq_inverse_point(y, theta, spline, xk, yk):
    r"""x = g^{-1}(y) and log (g^{-1})'(y) for one point, its spline's 3K - 1 parameters in
    ``theta`` (uw, uh, ud), its options in ``spline`` = (K, B, m_w, m_h, m_d, shift);
    ``xk``, ``yk`` (K + 1,) are scratch. The module docstring of
    ``bijectors.spline`` has the formulas: the bin k of y among the y-knots, xi the root in
    [0, 1] of a xi^2 + b xi + c = 0 in the form 2c / (-b - sqrt(b^2 - 4ac)) (no
    cancellation), log-det -log g'(x). Outside [-B, B]: the identity (linear tails)."""
    K = int(spline[0])
    bound, min_width, min_height = spline[1], spline[2], spline[3]
    min_derivative, shift = spline[4], spline[5]
    if y < -bound or y > bound:
        return y, 0.0
    _knots(theta, 0, K, bound, min_width, xk)
    _knots(theta, K, K, bound, min_height, yk)
    k = 0
    for j in range(1, K):  # the number of interior knots <= y (a knot y_k is in bin k)
        if y >= yk[j]:
            k += 1
    x0, W = xk[k], xk[k + 1] - xk[k]
    y0, H = yk[k], yk[k + 1] - yk[k]
    d0 = _knot_derivative(theta, K, k, min_derivative, shift)
    d1 = _knot_derivative(theta, K, k + 1, min_derivative, shift)
    s = H / W
    dy = y - y0
    delta = d1 + d0 - 2 * s
    a = H * (s - d0) + dy * delta
    b = H * d0 - dy * delta
    c = -s * dy
    xi = 2 * c / (-b - np.sqrt(max(b * b - 4 * a * c, 0.0)))
    xi = min(max(xi, 0.0), 1.0)
    theta_xi = xi * (1 - xi)
    Q = d1 * xi * xi + 2 * s * theta_xi + d0 * (1 - xi) * (1 - xi)
    Dn = s + delta * theta_xi
    return x0 + xi * W, -(2 * np.log(s) + np.log(Q) - 2 * np.log(Dn))
