r"""Two-dimensional toy densities for fitting and checking normalizing flows.

These are the classic 2-D benchmarks of the flow literature (as in FFJORD,
Grathwohl et al. 2019), re-implemented with NumPy only and an explicit
random generator.  Use :func:`toy` to draw training data for a flow
:math:`q`, and, for the densities known in closed form (``"8gaussians"``
and ``"checkerboard"``), use :func:`toy_log_prob` and :func:`toy_entropy`
to measure how good the fit is: the test negative log-likelihood
:math:`\mathrm{NLL} = \mathbb{E}_p[-\log q(x)]` exceeds the entropy
:math:`H(p) = \mathbb{E}_p[-\log p(x)]` by exactly the divergence, so
:math:`\mathrm{KL}(p \,\|\, q) = \mathrm{NLL} - H(p) \ge 0`
(see :func:`kl_from_nll`).

Examples
--------
>>> import numpy as np
>>> x = toy("8gaussians", 5, np.random.default_rng(0))
>>> x.shape, x.dtype
((5, 2), dtype('float64'))
>>> round(toy_entropy("checkerboard"), 6)  # log(32)
3.465736
"""

from functools import lru_cache

import numpy as np

__all__ = ["TOY_NAMES", "toy", "toy_log_prob", "toy_entropy", "kl_from_nll", "digits",
           "bits_per_dim"]

TOY_NAMES = ("moons", "circles", "8gaussians", "checkerboard", "2spirals",
             "pinwheel", "rings")

# Names whose density p(x) we know in closed form.
CLOSED_FORM_NAMES = ("8gaussians", "checkerboard")  # exact log-density and entropy known

# 8gaussians: centres on a circle of radius 4/1.414, std 0.5/1.414.
_G8_DIRECTIONS = np.column_stack([np.cos(np.arange(8) * np.pi / 4),
                                  np.sin(np.arange(8) * np.pi / 4)])
_G8_CENTERS = 4 * _G8_DIRECTIONS / 1.414
_G8_STD = 0.5 / 1.414


# ---------------------------------------------------------------- helpers
def _check_name(name, func, allowed=TOY_NAMES):
    if name not in TOY_NAMES:
        raise ValueError(f"{func} expected name to be one of {TOY_NAMES}, "
                         f"got {name!r}")
    if name not in allowed:
        raise ValueError(f"{func}: no closed-form density for {name!r}; "
                         f"only {allowed} have one")


def _split(n, k):
    """Split ``n`` points over ``k`` groups as evenly as possible."""
    return [n // k + (i < n % k) for i in range(k)]


def _circle(m, radius):
    """``m`` equally spaced points on a circle (first point at angle 0)."""
    t = np.linspace(0.0, 2 * np.pi, m, endpoint=False)
    return radius * np.column_stack([np.cos(t), np.sin(t)])


# --------------------------------------------------------------- samplers
def _moons(n, rng):
    n_out, n_in = _split(n, 2)
    t_out = np.linspace(0.0, np.pi, n_out)
    t_in = np.linspace(0.0, np.pi, n_in)
    outer = np.column_stack([np.cos(t_out), np.sin(t_out)])
    inner = np.column_stack([1 - np.cos(t_in), 0.5 - np.sin(t_in)])
    x = np.vstack([outer, inner]) + 0.1 * rng.standard_normal((n, 2))
    return 2 * x + np.array([-1.0, -0.2])


def _circles(n, rng):
    n_out, n_in = _split(n, 2)
    x = np.vstack([_circle(n_out, 1.0), _circle(n_in, 0.5)])
    return 3 * (x + 0.08 * rng.standard_normal((n, 2)))


def _8gaussians(n, rng):
    k = rng.integers(8, size=n)                      # uniform component
    x = 4 * _G8_DIRECTIONS[k] + 0.5 * rng.standard_normal((n, 2))
    return x / 1.414


def _checkerboard(n, rng):
    x1 = rng.uniform(size=n) * 4 - 2
    x2 = rng.uniform(size=n) - 2 * rng.integers(0, 2, size=n)
    x2 = x2 + np.floor(x1) % 2
    return 2 * np.column_stack([x1, x2])


def _2spirals(n, rng):
    t = np.sqrt(rng.uniform(size=n)) * 3 * np.pi    # 540 degrees
    arm = np.column_stack([-np.cos(t) * t, np.sin(t) * t])
    arm += 0.5 * rng.uniform(size=(n, 2))
    sign = np.repeat([1.0, -1.0], _split(n, 2))[:, None]   # two arms
    return sign * arm / 3 + 0.1 * rng.standard_normal((n, 2))


def _pinwheel(n, rng):
    label = np.repeat(np.arange(5), _split(n, 5))
    r = 1 + 0.3 * rng.standard_normal(n)            # radial coordinate
    s = 0.1 * rng.standard_normal(n)                # tangential coordinate
    a = 2 * np.pi * label / 5 + 0.25 * np.exp(r)    # arm angle + twist
    # FFJORD rotates the row vector (r, s) by the matrix R(a), i.e. by -a.
    x = np.column_stack([r * np.cos(a) + s * np.sin(a),
                         -r * np.sin(a) + s * np.cos(a)])
    return 2 * x


def _rings(n, rng):
    radii = (1.0, 0.75, 0.5, 0.25)
    x = np.vstack([_circle(m, r) for m, r in zip(_split(n, 4), radii)])
    return 3 * x + 0.08 * rng.standard_normal((n, 2))


_SAMPLERS = {"moons": _moons, "circles": _circles, "8gaussians": _8gaussians,
             "checkerboard": _checkerboard, "2spirals": _2spirals,
             "pinwheel": _pinwheel, "rings": _rings}


# ------------------------------------------------------------- public API
def toy(name, n, rng=None):
    r"""Draw ``n`` samples from a 2-D toy density (FFJORD conventions).

    Parameters
    ----------
    name : str
        One of :data:`TOY_NAMES`:

        * ``"moons"`` -- two interleaving half circles plus
          :math:`\mathcal N(0, 0.1^2)` noise, mapped by
          :math:`x \mapsto 2x + (-1, -0.2)`.
        * ``"circles"`` -- circles of radius 1 and 0.5 plus
          :math:`\mathcal N(0, 0.08^2)` noise, times 3.
        * ``"8gaussians"`` -- equal-weight mixture of 8 isotropic Gaussians,
          centres :math:`\mu_k = \tfrac{4}{1.414}(\cos\tfrac{k\pi}{4},
          \sin\tfrac{k\pi}{4})`, standard deviation :math:`\sigma =
          0.5/1.414`.
        * ``"checkerboard"`` -- uniform on the 8 "black" squares of side 2 of
          a checkerboard on :math:`[-4, 4]^2`; density :math:`1/32` there.
        * ``"2spirals"`` -- two opposite arms :math:`\pm(-t\cos t, t\sin t)`,
          :math:`t = 3\pi\sqrt{U}`, jittered by :math:`U(0, 0.5)^2`, divided
          by 3, plus :math:`\mathcal N(0, 0.1^2)` noise.
        * ``"pinwheel"`` -- 5 arms; radial coordinate
          :math:`r \sim \mathcal N(1, 0.3^2)`, tangential
          :math:`s \sim \mathcal N(0, 0.1^2)`, rotated by
          :math:`2\pi j/5 + 0.25\,e^{r}`, times 2.
        * ``"rings"`` -- 4 concentric circles of radii 3, 2.25, 1.5, 0.75
          plus :math:`\mathcal N(0, 0.08^2)` noise.

        Points on circles (moons, circles, rings) are equally spaced in angle,
        as in scikit-learn / FFJORD; the noise makes the density continuous.
    n : int
        Number of samples, a positive integer.  Exactly ``n`` rows are
        returned; when the classes cannot all have the same size the first
        classes get one point more.
    rng : numpy.random.Generator, optional
        Source of randomness.  ``None`` means ``np.random.default_rng()``
        (fresh, unseeded).

    Returns
    -------
    x : ndarray of float64, shape (n, 2)
        The samples, rows shuffled so that the classes are mixed.

    Examples
    --------
    >>> x = toy("checkerboard", 3, np.random.default_rng(1))
    >>> x.shape
    (3, 2)
    >>> bool(np.all(np.isfinite(toy_log_prob("checkerboard", x))))
    True
    """
    _check_name(name, "toy")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"toy expected n to be a positive int, got {n!r}")
    if rng is None:
        rng = np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError("toy expected rng to be a numpy.random.Generator or "
                        f"None, got {type(rng).__name__}")
    x = _SAMPLERS[name](int(n), rng)
    return rng.permutation(np.asarray(x, dtype=np.float64))


def toy_log_prob(name, x):
    r"""Exact log-density :math:`\log p(x)` of a toy distribution.

    Only the names with a closed-form density are supported:

    * ``"8gaussians"``:
      :math:`\log p(x) = \log \sum_{k=0}^{7} \tfrac18
      \mathcal N(x;\, \mu_k, \sigma^2 I)
      = \operatorname{logsumexp}_k\!\Big(-\tfrac{\|x-\mu_k\|^2}{2\sigma^2}\Big)
      - \log 8 - \log(2\pi\sigma^2)`.
    * ``"checkerboard"``: :math:`\log p(x) = \log(1/32)` on the squares
      :math:`\{x \in [-4, 4)^2 : \lfloor x_1/2 \rfloor + \lfloor x_2/2
      \rfloor \text{ even}\}`, and :math:`-\infty` elsewhere.

    Parameters
    ----------
    name : {"8gaussians", "checkerboard"}
    x : array_like, shape (N, 2)
        Finite points.

    Returns
    -------
    log_p : ndarray of float64, shape (N,)

    Examples
    --------
    >>> toy_log_prob("checkerboard", [[1.0, 1.0], [-1.0, 1.0]])
    array([-3.4657359,       -inf])
    """
    _check_name(name, "toy_log_prob", allowed=CLOSED_FORM_NAMES)
    try:
        x = np.asarray(x, dtype=np.float64)
        ok = x.ndim == 2 and x.shape[1] == 2 and bool(np.all(np.isfinite(x)))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        got = (f"shape {x.shape}" if isinstance(x, np.ndarray)
               else f"{type(x).__name__}")
        raise ValueError("toy_log_prob expected x of shape (N, 2) with finite "
                         f"values, got {got}")

    if name == "8gaussians":
        s2 = _G8_STD ** 2
        d2 = np.sum((x[:, None, :] - _G8_CENTERS[None]) ** 2, axis=-1)
        from scipy.special import logsumexp  # here, not at the top: scipy is slow to import
        return (logsumexp(-d2 / (2 * s2), axis=1)
                - np.log(8) - np.log(2 * np.pi * s2))

    # checkerboard
    inside = np.all((x >= -4) & (x < 4), axis=1)
    black = np.sum(np.floor(x / 2), axis=1) % 2 == 0
    return np.where(inside & black, -np.log(32.0), -np.inf)


def toy_entropy(name):
    r"""Differential entropy :math:`H(p) = -\mathbb{E}_p[\log p(x)]` in nats.

    * ``"checkerboard"``: uniform on a set of area 32, so
      :math:`H = \log 32` exactly.
    * ``"8gaussians"``: no closed form because the components overlap a
      little.  By symmetry every component contributes the same, so

      .. math::

          H = -\mathbb{E}_{z \sim \mathcal N(0, I)}
              \big[\log p(\mu_0 + \sigma z)\big],

      which is computed by an 80 x 80 point Gauss-Hermite rule (error far
      below 1e-9).  Result: about 2.8318804, slightly below the
      no-overlap value :math:`\log 8 + \log(2\pi e\sigma^2) \approx 2.83818`.

    The quadrature result is cached.

    Examples
    --------
    >>> round(toy_entropy("8gaussians"), 6)
    2.83188
    """
    _check_name(name, "toy_entropy", allowed=CLOSED_FORM_NAMES)
    if name == "checkerboard":
        return float(np.log(32.0))
    return _8gaussians_entropy()


@lru_cache(maxsize=None)
def _8gaussians_entropy():
    z, w = np.polynomial.hermite_e.hermegauss(80)   # weight exp(-z^2/2)
    w = w / w.sum()
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    points = _G8_CENTERS[0] + _G8_STD * np.column_stack([z1.ravel(),
                                                         z2.ravel()])
    weights = np.outer(w, w).ravel()
    return float(-np.sum(weights * toy_log_prob("8gaussians", points)))


def kl_from_nll(name, nll):
    r"""Turn a test NLL into :math:`\mathrm{KL}(p \,\|\, q)`.

    .. math::

        \mathrm{KL}(p \,\|\, q) = \mathbb{E}_p[-\log q(x)] - H(p)
                                = \mathrm{NLL} - H(p),

    where ``nll`` is the average of :math:`-\log q(x)` over samples
    :math:`x \sim p` (in nats per point).  Monte-Carlo error can make the
    result slightly negative for a near-perfect model.

    Examples
    --------
    >>> round(kl_from_nll("checkerboard", np.log(32) + 0.25), 12)
    0.25
    """
    _check_name(name, "kl_from_nll", allowed=CLOSED_FORM_NAMES)
    return float(nll) - toy_entropy(name)


def kl_estimate(name, x, log_q):
    r"""Monte-Carlo estimate of :math:`\mathrm{KL}(p \,\|\, q)` with its standard error.

    .. math::

        \mathrm{KL}(p \,\|\, q) \approx \frac1n \sum_i \big[\log p(x_i) - \log q(x_i)\big],
        \qquad \mathrm{SE} = \frac{\operatorname{std}_i[\log p(x_i) - \log q(x_i)]}{\sqrt n},

    for ``x`` (n, 2) drawn from the toy density ``name`` and ``log_q`` (n,) the model's
    log-density at ``x``. The terms have a heavy tail (a point where the model puts little
    mass costs a lot), so use many points: the CLI uses a million.

    Examples
    --------
    >>> x = toy("checkerboard", 1000, np.random.default_rng(0))
    >>> kl, se = kl_estimate("checkerboard", x, np.full(1000, -np.log(32.0)))
    >>> round(kl, 12), se
    (0.0, 0.0)
    """
    _check_name(name, "kl_estimate", allowed=CLOSED_FORM_NAMES)
    terms = toy_log_prob(name, x) - np.asarray(log_q, dtype=np.float64)
    return float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(len(terms)))


# ---------------------------------------------------------------- 8x8 digits
DIGITS_LEVELS = 17  # pixel values 0..16
_DIGITS_SPLITS = {"train": 0, "validation": 1, "test": 2}


@lru_cache(maxsize=1)
def _digits_arrays():
    from pathlib import Path
    with np.load(Path(__file__).parent / "data" / "digits.npz", allow_pickle=False) as f:
        return f["images"], f["labels"], f["split"]


def digits(split="train", labels=False):
    r"""The 8x8 handwritten digits (UCI "Optical Recognition of Handwritten Digits",
    Alpaydin and Kaynak 1998, CC BY 4.0; see ``nflows_edu/data/README.md``).

    1,797 images of 64 pixels, each an integer 0..16, with a fixed split: 1,257 train,
    270 validation, 270 test images (the same on every machine: stored in the file).

    Parameters
    ----------
    split : {"train", "validation", "test", "all"}
    labels : bool, also return the digits shown

    Returns
    -------
    x : ndarray (N, 64) float64 of integers 0..16 (row-major 8x8 images); with ``labels``,
        ``(x, y)`` with y (N,) int64.

    Examples
    --------
    >>> [digits(s).shape[0] for s in ("train", "validation", "test")]
    [1257, 270, 270]
    """
    images, digit, which = _digits_arrays()
    if split == "all":
        keep = np.ones(len(images), dtype=bool)
    elif split in _DIGITS_SPLITS:
        keep = which == _DIGITS_SPLITS[split]
    else:
        raise ValueError(f"digits: expected split 'train', 'validation', 'test' or 'all', got "
                         f"{split!r}")
    x = images[keep].astype(np.float64)
    return (x, digit[keep].astype(np.int64)) if labels else x


def bits_per_dim(nll, dim):
    r"""Convert a mean NLL in nats per example into bits per dimension:

        bits/dim = NLL / (D log 2)

    For pixels, ``nll`` must be the NLL of the *dequantised* pixels v = x + u in their own
    units (a density on [0, L)^D, as ``models.maf(..., pixel_levels=L)`` gives); it then
    bounds the discrete model's bits per dimension from above. The uniform model, density
    L^-D on [0, L)^D, scores exactly log2(L): 4.087 bits for the 17 grey levels of digits.

    Examples
    --------
    >>> round(bits_per_dim(64 * np.log(17), 64), 12)  # the uniform model: log2(17)
    4.08746284125
    """
    return float(nll) / (int(dim) * float(np.log(2)))


# =================================================================================================
# Unnormalised 2-D energies U1-U4 (Rezende and Mohamed 2015, Table 1): targets for reverse KL
# =================================================================================================
# A flow q trained in its sampling direction needs only U(x) and its gradient, not samples:
#
#     KL(q || p) = E_q[log q(x) + U(x)] + log Z,    p(x) = exp(-U(x)) / Z,
#
# so with log Z known (computed once on a grid) the fitted loss is the KL in nats up to that
# constant.

ENERGY_NAMES = ("U1", "U2", "U3", "U4")

# U2-U4 depend on x1 only through sin, a bump and a sigmoid, so exp(-U) is not integrable over
# the plane (the paper draws them on [-4, 4]^2). To make p a distribution with a finite log Z we
# add a quadratic wall outside that box:  wall(x1) = 0.5 * (max(|x1| - 4, 0) / 0.2)^2,
# zero on the box (the pictures are unchanged) and at least 12.5 nats beyond |x1| = 4.5.
_WALL_AT = 4.0
_WALL_WIDTH = 0.2
# The grid for log Z: midpoints of an n x n grid on [-8, 8]^2 (exp(-U) < 1e-12 outside it).
_LOG_Z_LIM = 8.0
_LOG_Z_N = 1000


def _w1(x1):
    return np.sin(0.5 * np.pi * x1), 0.5 * np.pi * np.cos(0.5 * np.pi * x1)


def _w2(x1):
    w = 3.0 * np.exp(-0.5 * ((x1 - 1.0) / 0.6) ** 2)
    return w, -w * (x1 - 1.0) / 0.36


def _w3(x1):
    s = 0.5 * (1.0 + np.tanh(0.5 * (x1 - 1.0) / 0.3))  # sigmoid((x1 - 1) / 0.3)
    return 3.0 * s, 3.0 * s * (1.0 - s) / 0.3


def _two_bumps(e1, de1, s1, e2, de2, s2):
    r"""U = -log(exp(l1) + exp(l2)), l_i = -0.5 (e_i / s_i)^2, and dU/dx = -sum_i p_i dl_i/dx
    with p_i = exp(l_i) / (exp(l1) + exp(l2)); ``de_i`` (N, 2) are the gradients of e_i."""
    l1, l2 = -0.5 * (e1 / s1) ** 2, -0.5 * (e2 / s2) ** 2
    u = -np.logaddexp(l1, l2)
    p1 = np.exp(l1 + u)
    p2 = 1.0 - p1
    grad = (p1 * e1 / s1**2)[:, None] * de1 + (p2 * e2 / s2**2)[:, None] * de2
    return u, grad


def _energy_and_grad(name, x):
    x1, x2 = x[:, 0], x[:, 1]
    zeros, ones = np.zeros_like(x1), np.ones_like(x1)
    if name == "U1":
        norm = np.sqrt(x1**2 + x2**2)
        ring = 0.5 * ((norm - 2.0) / 0.4) ** 2
        safe = np.where(norm > 0, norm, 1.0)
        dring = np.where(norm > 0, (norm - 2.0) / (0.16 * safe), 0.0)[:, None] * x
        dx1 = np.column_stack([ones, zeros])
        bumps, dbumps = _two_bumps(x1 - 2.0, dx1, 0.6, x1 + 2.0, dx1, 0.6)
        return ring + bumps, dring + dbumps
    w1, dw1 = _w1(x1)
    e1 = x2 - w1
    de1 = np.column_stack([-dw1, ones])
    if name == "U2":
        u, grad = 0.5 * (e1 / 0.4) ** 2, (e1 / 0.16)[:, None] * de1
    elif name == "U3":
        w2, dw2 = _w2(x1)
        u, grad = _two_bumps(e1, de1, 0.35, e1 + w2, de1 + np.column_stack([dw2, zeros]), 0.35)
    else:  # U4
        w3, dw3 = _w3(x1)
        u, grad = _two_bumps(e1, de1, 0.4, e1 + w3, de1 + np.column_stack([dw3, zeros]), 0.35)
    out = np.maximum(np.abs(x1) - _WALL_AT, 0.0)
    u = u + 0.5 * (out / _WALL_WIDTH) ** 2
    grad[:, 0] += np.sign(x1) * out / _WALL_WIDTH**2
    return u, grad


def _check_energy_input(name, x, func):
    if name not in ENERGY_NAMES:
        raise ValueError(f"{func} expected name to be one of {ENERGY_NAMES}, got {name!r}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{func} expected x of shape (N, 2), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{func} expected finite values in x, got NaN or inf")
    return x


def energy(name, x):
    r"""The energy U(x) of Rezende and Mohamed (2015), Table 1; p(x) is proportional to exp(-U).

    With w1(x) = sin(2 pi x1 / 4), w2(x) = 3 exp(-0.5 ((x1 - 1) / 0.6)^2),
    w3(x) = 3 sigmoid((x1 - 1) / 0.3):

    * U1(x) = 0.5 ((||x|| - 2) / 0.4)^2
      - log(exp(-0.5 ((x1 - 2) / 0.6)^2) + exp(-0.5 ((x1 + 2) / 0.6)^2))
    * U2(x) = 0.5 ((x2 - w1) / 0.4)^2
    * U3(x) = -log(exp(-0.5 ((x2 - w1) / 0.35)^2) + exp(-0.5 ((x2 - w1 + w2) / 0.35)^2))
    * U4(x) = -log(exp(-0.5 ((x2 - w1) / 0.4)^2) + exp(-0.5 ((x2 - w1 + w3) / 0.35)^2))

    U2-U4 also get the wall 0.5 (max(|x1| - 4, 0) / 0.2)^2, which is zero on the paper's box
    [-4, 4]^2 and makes exp(-U) integrable (without it, exp(-U) repeats along x1 for ever).

    Parameters
    ----------
    name : {"U1", "U2", "U3", "U4"}
    x : array_like (N, 2), finite

    Returns
    -------
    U : ndarray (N,)

    Examples
    --------
    >>> round(float(energy("U2", [[0.0, 0.0]])[0]), 6)
    0.0
    """
    return _energy_and_grad(name, _check_energy_input(name, x, "energy"))[0]


def energy_grad(name, x):
    r"""The gradient dU/dx (N, 2) of ``energy(name, x)``, written by hand (the chain rule through
    w1, w2, w3 and through the log-sum-exp of two Gaussian bumps, whose weights are the
    bumps' shares p_i = exp(l_i) / (exp(l_1) + exp(l_2))). At x = 0, U1's ring term has no
    gradient (||x|| is not differentiable there); 0 is returned for it."""
    return _energy_and_grad(name, _check_energy_input(name, x, "energy_grad"))[1]


def energy_log_z(name, n=_LOG_Z_N, lim=_LOG_Z_LIM):
    r"""log Z = log of the integral of exp(-U(x)) over the plane, on a grid.

    The midpoint rule on an ``n`` x ``n`` grid over [-lim, lim]^2 (default 1000 x 1000 on
    [-8, 8]^2, spacing 0.016). exp(-U) is below 1e-12 outside that square. The midpoint rule
    converges very fast for a smooth integrand that vanishes at the edges; the only roughness
    is the wall's jump in second derivative at |x1| = 4, which the default grid puts on a cell
    boundary. Measured: the 2000 x 2000 and 4000 x 4000 grids on [-8, 8]^2 agree with the
    default to 2e-14 for each of U1-U4, U2's closed form (log(0.4 sqrt(2 pi) (8 + 0.4
    sqrt(pi / 2)))) to 1e-14; grids that cut the wall inside a cell converge as h^4 (spacing
    0.0225: 5e-7, 0.0113: 3e-8, 0.0053: 7e-9). The result is cached.

    Examples
    --------
    >>> round(energy_log_z("U2"), 4)
    2.1429
    """
    if name not in ENERGY_NAMES:
        raise ValueError(f"energy_log_z expected name to be one of {ENERGY_NAMES}, got {name!r}")
    return _energy_log_z(name, int(n), float(lim))


@lru_cache(maxsize=None)
def _energy_log_z(name, n, lim):
    from scipy.special import logsumexp
    h = 2 * lim / n
    centres = -lim + h * (np.arange(n) + 0.5)
    total = []
    for rows in np.array_split(centres, max(1, n // 250)):  # a few MB at a time
        x1, x2 = np.meshgrid(rows, centres, indexing="ij")
        u, _ = _energy_and_grad(name, np.column_stack([x1.ravel(), x2.ravel()]))
        total.append(-u)
    return float(logsumexp(np.concatenate(total)) + 2 * np.log(h))


def energy_target(name):
    r"""``(log_target, grad_log_target)`` for ``train.fit_reverse_kl``: x -> -U(x) and
    x -> -dU/dx, the unnormalised log-density of ``energy(name, .)`` and its gradient."""
    if name not in ENERGY_NAMES:
        raise ValueError(f"energy_target expected name to be one of {ENERGY_NAMES}, got {name!r}")
    return (lambda x: -energy(name, x)), (lambda x: -energy_grad(name, x))
