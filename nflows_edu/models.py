r"""Paper configurations, each returning a ``Flow``.

Every builder records its arguments in ``flow.config`` so ``nflows_edu.save`` / ``load`` can
rebuild the same architecture and then copy the saved parameters into it.
"""
import numpy as np

from .bijectors import (IAF, MAF, AdditiveCoupling, AffineCoupling, BatchNorm, Logit,
                        MultiScale, Scaling, ScaleToUnit, alternating_mask, glow_levels,
                        realnvp_levels)
from .core import Chain, Flow
from .distributions import StandardLogistic, StandardNormal
from .nn import check_lipschitz_bound


def _check_dim(dim, where):
    if int(dim) != dim or dim < 2:
        raise ValueError(f"{where}: expected dim >= 2 (a coupling layer splits the features), "
                         f"got {dim!r}")
    return int(dim)


def _check_layers(n_layers, where):
    if isinstance(n_layers, bool) or int(n_layers) != n_layers or n_layers < 1:
        raise ValueError(f"{where}: expected n_layers >= 1, got {n_layers!r}")
    return int(n_layers)


def nice(dim, n_layers=4, hidden=(64, 64), activation="relu", rng=None, dtype=np.float64):
    r"""NICE (Dinh, Krueger, Bengio 2014, arXiv:1410.8516).

    ``n_layers`` additive couplings whose partitions alternate between the even and the odd
    features, then a diagonal ``Scaling``; the prior is the standard logistic. (The paper used
    4 couplings with 5 x 1000 ReLU units on MNIST; ``hidden`` sets the net here.)

        log p(x) = sum_j log p_logistic(z_j) + sum_j log_s[j],   z = exp(log_s) * f_couplings(x)
    """
    dim = _check_dim(dim, "nice")
    n_layers = _check_layers(n_layers, "nice")
    rng = np.random.default_rng() if rng is None else rng
    layers = [AdditiveCoupling(alternating_mask(dim, k % 2), hidden, activation, rng, dtype)
              for k in range(n_layers)]
    config = dict(model="nice", dim=dim, n_layers=n_layers, hidden=list(hidden),
                  activation=activation, dtype=np.dtype(dtype).name)
    return Flow(Chain(layers + [Scaling(dim, dtype)]), StandardLogistic(dim, dtype), config)


def realnvp(dim, n_layers=8, hidden=(64, 64), activation="relu", s_max=3.0, rng=None,
            dtype=np.float64):
    r"""RealNVP for vectors (Dinh, Sohl-Dickstein, Bengio 2016, arXiv:1605.08803).

    ``n_layers`` affine couplings with alternating masks [1, 0, 1, ...] / [0, 1, 0, ...], so
    every feature is transformed in every other layer; standard normal prior. Each coupling's
    net starts at zero, so the untrained flow is the identity.
    """
    dim = _check_dim(dim, "realnvp")
    n_layers = _check_layers(n_layers, "realnvp")
    rng = np.random.default_rng() if rng is None else rng
    layers = [AffineCoupling(alternating_mask(dim, k % 2), hidden, activation, s_max, rng, dtype)
              for k in range(n_layers)]
    config = dict(model="realnvp", dim=dim, n_layers=n_layers, hidden=list(hidden),
                  activation=activation, s_max=s_max, dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(dim, dtype), config)


def nsf(dim, n_layers=8, hidden=(64, 64), activation="relu", n_bins=8, bound=4.0,
        pixel_levels=None, logit_alpha=0.05, rng=None, dtype=np.float64):
    r"""Neural spline flow, coupling version (Durkan, Bekasov, Murray, Papamakarios 2019,
    arXiv:1906.04032): ``n_layers`` rational-quadratic spline couplings
    (``bijectors.SplineCoupling``, ``n_bins`` bins on ``[-bound, bound]``, the identity
    outside) with alternating masks, as in ``realnvp``; standard normal prior. Each coupling's
    net starts at zero, so the untrained flow is the identity.

    With ``pixel_levels = L`` the flow models dequantised pixels v in [0, L)^D, as ``maf``
    does: ``ScaleToUnit(L)`` and ``Logit(logit_alpha)`` come first (the logit maps into
    about [-3, 3], inside the splines' default [-4, 4]).
    """
    from .bijectors.spline import SplineCoupling
    dim = _check_dim(dim, "nsf")
    n_layers = _check_layers(n_layers, "nsf")
    rng = np.random.default_rng() if rng is None else rng
    layers = []
    if pixel_levels is not None:  # dequantised pixels in [0, L) -> (0, 1) -> logit
        layers += [ScaleToUnit(dim, pixel_levels), Logit(dim, logit_alpha)]
    layers += [SplineCoupling(alternating_mask(dim, k % 2), hidden, activation, n_bins, bound,
                              rng=rng, dtype=dtype)
               for k in range(n_layers)]
    config = dict(model="nsf", dim=dim, n_layers=n_layers, hidden=list(hidden),
                  activation=activation, n_bins=int(n_bins), bound=float(bound),
                  pixel_levels=pixel_levels, logit_alpha=logit_alpha,
                  dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(dim, dtype), config)


def nsf_ar(dim, n_layers=5, hidden=(64, 64), activation="relu", n_bins=8, bound=4.0, rng=None,
           dtype=np.float64):
    r"""Neural spline flow, autoregressive version (Durkan, Bekasov, Murray, Papamakarios 2019,
    arXiv:1906.04032, section 3.3): ``n_layers`` ``bijectors.SplineAutoregressive`` layers
    (a MADE giving every feature's rational-quadratic spline, ``n_bins`` bins on
    ``[-bound, bound]``, the identity outside) whose order alternates between natural and
    reversed, as in ``maf``; standard normal prior. Each MADE's output layer starts at zero,
    so the untrained flow is the identity.

    Density (forward) is one MADE pass per layer; sampling (inverse) is sequential over the
    features, done by the Numba kernel ``kernels.spline_ar_inverse``.
    """
    from .bijectors.spline_autoregressive import SplineAutoregressive
    if int(dim) != dim or dim < 2:
        raise ValueError(f"nsf_ar: expected dim >= 2, got {dim!r}")
    dim = int(dim)
    n_layers = _check_layers(n_layers, "nsf_ar")
    rng = np.random.default_rng() if rng is None else rng
    layers = [SplineAutoregressive(dim, hidden, ("natural", "reversed")[k % 2], activation,
                                   n_bins, bound, rng=rng, dtype=dtype)
              for k in range(n_layers)]
    config = dict(model="nsf_ar", dim=dim, n_layers=n_layers, hidden=list(hidden),
                  activation=activation, n_bins=int(n_bins), bound=float(bound),
                  dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(dim, dtype), config)


def _autoregressive(cls, name, dim, n_layers, hidden, activation, s_max, batch_norm,
                    pixel_levels, logit_alpha, rng, dtype):
    if int(dim) != dim or dim < 2:
        raise ValueError(f"{name}: expected dim >= 2, got {dim!r}")
    dim = int(dim)
    rng = np.random.default_rng() if rng is None else rng
    layers = []
    if pixel_levels is not None:  # dequantised pixels in [0, L) -> (0, 1) -> logit
        layers += [ScaleToUnit(dim, pixel_levels), Logit(dim, logit_alpha)]
    for k in range(n_layers):
        layers.append(cls(dim, hidden, ("natural", "reversed")[k % 2], activation, s_max,
                          rng=rng, dtype=dtype))
        if batch_norm and k < n_layers - 1:
            layers.append(BatchNorm(dim, dtype=dtype))
    config = dict(model=name, dim=dim, n_layers=n_layers, hidden=list(hidden),
                  activation=activation, s_max=s_max, batch_norm=bool(batch_norm),
                  pixel_levels=pixel_levels, logit_alpha=logit_alpha, dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(dim, dtype), config)


def maf(dim, n_layers=5, hidden=(256, 256), activation="relu", s_max=3.0, batch_norm=False,
        pixel_levels=None, logit_alpha=0.05, rng=None, dtype=np.float64):
    r"""MAF (Papamakarios, Pavlakou, Murray 2017, arXiv:1705.07057).

    ``n_layers`` MAF layers (one MADE each) whose order alternates between natural and
    reversed, so a feature conditioned on nothing in one layer is conditioned on everything in
    the next; with ``batch_norm``, a ``BatchNorm`` between consecutive layers (as in the paper;
    call ``flow.eval()`` before evaluating or sampling). Standard normal prior. Each MADE's
    output layer starts at zero, so the untrained flow is the identity.

    Density (forward) is one MADE pass per layer; sampling (inverse) is sequential over the
    features, done by the Numba kernel in ``nflows_edu.kernels``.

    With ``pixel_levels = L`` the flow models dequantised pixels v in [0, L)^D (see
    ``bijectors.preprocess``): ``ScaleToUnit(L)`` and ``Logit(logit_alpha)`` come first, so
    ``log_prob(v)`` is the density of v itself and ``sample`` returns pixel values.
    """
    return _autoregressive(MAF, "maf", dim, n_layers, hidden, activation, s_max, batch_norm,
                           pixel_levels, logit_alpha, rng, dtype)


def iaf(dim, n_layers=5, hidden=(256, 256), activation="relu", s_max=3.0, batch_norm=False,
        pixel_levels=None, logit_alpha=0.05, rng=None, dtype=np.float64):
    r"""IAF (Kingma et al. 2016, arXiv:1606.04934): ``maf``'s architecture with every layer
    an ``IAF`` (``Inverse(MAF)``): sampling is one MADE pass per layer, the density of a
    given point is sequential. Its forward direction has no VJP, so it is trained in the
    sampling direction (reverse KL), not by maximum likelihood.
    """
    return _autoregressive(IAF, "iaf", dim, n_layers, hidden, activation, s_max, batch_norm,
                           pixel_levels, logit_alpha, rng, dtype)


def _blocks(n_blocks, n_layers, where):
    n = n_layers if n_layers is not None else n_blocks  # n_layers: the CLI's --n-layers
    if int(n) != n or n < 1:
        raise ValueError(f"{where}: expected a positive number of blocks, got {n!r}")
    return int(n)


def iresnet(dim, n_blocks=8, hidden=(64, 64), c=0.9, logdet="exact", activation="lipswish",
            n_terms=5, eval_logdet=None, n_layers=None, rng=None, dtype=np.float64):
    r"""Invertible residual network (Behrmann et al. 2019, arXiv:1811.00995).

    ``n_blocks`` residual blocks ``x <- x + g_k(x)``, each ``g_k`` a spectrally normalised MLP
    with Lip(g_k) <= c; standard normal prior. ``logdet`` is ``"exact"`` (small D),
    ``"series"`` (i-ResNet's truncated power series, ``n_terms`` terms, Hutchinson) or
    ``"roulette"``. The paper used ELU; LipSwish here, because the exact log-det's gradient
    needs the activation's second derivative. ``n_layers`` is an alias of ``n_blocks``.
    ``eval_logdet`` is the log-det in evaluation mode (``flow.eval()``, what sampling and
    density evaluation use); None means exact for dim <= 16, ``logdet`` beyond
    (``ResidualBlock``); ``flow.config["eval_logdet"]`` says which.

        log p(x) = log N(z; 0, I) + sum_k log det(I + J_{g_k}(x_{k-1}))
    """
    from .bijectors.residual import ResidualBlock, default_eval_logdet
    dim = _check_dim(dim, "iresnet")
    c = check_lipschitz_bound(c, "iresnet")
    n_blocks = _blocks(n_blocks, n_layers, "iresnet")
    rng = np.random.default_rng() if rng is None else rng
    eval_logdet = default_eval_logdet(dim, logdet) if eval_logdet is None else eval_logdet
    layers = [ResidualBlock(dim, hidden, c, activation, logdet, n_terms=n_terms,
                            eval_logdet=eval_logdet, eval_seed=k, rng=rng, dtype=dtype)
              for k in range(n_blocks)]
    config = dict(model="iresnet", dim=dim, n_blocks=n_blocks, hidden=list(hidden), c=c,
                  logdet=logdet, eval_logdet=eval_logdet, activation=activation,
                  n_terms=n_terms, dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(dim, dtype), config)


def resflow(dim, n_blocks=8, hidden=(64, 64), c=0.99, logdet="roulette", activation="sine",
            n_exact=2, p=0.5, eval_logdet=None, n_layers=None, rng=None, dtype=np.float64):
    r"""Residual Flow (Chen et al. 2019, arXiv:1906.02735): residual blocks with the unbiased
    Russian-roulette log-det estimator (``n_exact`` terms always, then a geometric(``p``)
    number more) with the Neumann-series gradient, in training. The roulette's estimate is
    unbiased for the log-density but differs at every call, so evaluation mode
    (``flow.eval()``) uses ``eval_logdet``: None means the exact log-det for dim <= 16 (then
    ``log_prob`` is the density itself, the same at every call) and the roulette, seeded
    afresh at every call, beyond; ``flow.config["eval_logdet"]`` says which.

    ``c`` bounds every layer of each g (``LipschitzMLP``), so Lip(g) <= c^3 with two hidden
    layers. The defaults, the sine activation (``Sine``, ImpFlow's choice for 2-D data) and
    c = 0.99, replace LipSwish (the paper's) and c = 0.9, with which ``nflows-edu train``
    (5000 steps, batch 512) reached KL 0.53 nats on checkerboard and 0.13 on 8gaussians. On
    checkerboard after 1000 such steps (KL on 200,000 points, seed 0) LipSwish stayed at
    0.71-0.77 with either log-det (exact or roulette), c from 0.9 to 0.99, or 128x128
    networks, at 0.63-0.65 with 16 or 32 blocks, 0.50 at lr 1e-2; sine reached 0.15 with
    the exact log-det (0.20 at c = 0.9, 0.16 at c = 0.97) and 0.16 with the roulette. The
    activation, not the bound, was the limit: in the LipSwish model (c = 0.99) blocks 3-8
    had ||J_g(x)||_2 <= 0.21 at 5000 data points (the bound allows 0.97); the sine blocks'
    maxima were 0.45-0.81. ``nflows-edu train`` with these defaults (5000 steps, KL on 1,000,000
    points): checkerboard 0.0812 +- 0.0003, 8gaussians 0.0083 +- 0.0001. With seeds 1 and 2
    checkerboard reached 0.0978 and 0.0936 +- 0.0006 (200,000 points), close to 0.10; with
    seed 1 the exact log-det in training (``set_logdet``, 15% slower here) reached 0.0841
    (seed 0: 0.0723), and 12 blocks (45% slower) 0.0840, both +- 0.0006.
    """
    from .bijectors.residual import ResidualBlock, default_eval_logdet
    dim = _check_dim(dim, "resflow")
    c = check_lipschitz_bound(c, "resflow")
    n_blocks = _blocks(n_blocks, n_layers, "resflow")
    rng = np.random.default_rng() if rng is None else rng
    eval_logdet = default_eval_logdet(dim, logdet) if eval_logdet is None else eval_logdet
    layers = [ResidualBlock(dim, hidden, c, activation, logdet, n_exact=n_exact, p=p,
                            eval_logdet=eval_logdet, eval_seed=k, rng=rng, dtype=dtype)
              for k in range(n_blocks)]
    config = dict(model="resflow", dim=dim, n_blocks=n_blocks, hidden=list(hidden), c=c,
                  logdet=logdet, eval_logdet=eval_logdet, activation=activation,
                  n_exact=n_exact, p=p, dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(dim, dtype), config)


def impflow(dim, n_blocks=4, hidden=(64, 64), c=0.99, logdet="exact", activation="sine",
            tol=None, eval_logdet=None, n_layers=None, rng=None, dtype=np.float64):
    r"""Implicit normalizing flow (Lu et al. 2021, arXiv:2103.09527): ``n_blocks``
    ``ImplicitBlock``s, each with two Lipschitz MLPs g_x, g_z (Lip <= c) and z the root of
    g_x(x) - g_z(z) + x - z = 0 (Anderson-accelerated fixed point); standard normal prior.
    The sine activation is the paper's choice for its 2-D experiments; ``logdet="exact"`` by
    default because toy data is 2-D (the exact log-det has no estimator noise there).
    ``tol`` is the root finder's tolerance; None means 1e-9 in float64, which leaves z
    within c/(1-c) * 1e-9 = 1e-7 of the root, far below what training or an NLL notices, at
    about half the iterations of the 1e-13 the registry checks use (round trip <= 1e-10),
    and 1e-5 in float32 (its round-off is ~1e-7). ``eval_logdet`` as in ``resflow``.
    """
    from .bijectors.implicit import ImplicitBlock
    from .bijectors.residual import default_eval_logdet
    dim = _check_dim(dim, "impflow")
    c = check_lipschitz_bound(c, "impflow")
    n_blocks = _blocks(n_blocks, n_layers, "impflow")
    rng = np.random.default_rng() if rng is None else rng
    solver_tol = (1e-9 if np.dtype(dtype) == np.float64 else 1e-5) if tol is None else tol
    eval_logdet = default_eval_logdet(dim, logdet) if eval_logdet is None else eval_logdet
    layers = [ImplicitBlock(dim, hidden, c, activation, logdet, rng=rng, dtype=dtype,
                            tol=solver_tol, eval_logdet=eval_logdet, eval_seed=2 * k)
              for k in range(n_blocks)]
    config = dict(model="impflow", dim=dim, n_blocks=n_blocks, hidden=list(hidden), c=c,
                  logdet=logdet, eval_logdet=eval_logdet, activation=activation, tol=tol,
                  dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(dim, dtype), config)


def set_logdet(flow, mode, rng=None):
    r"""Switch every residual block of ``flow`` to log-det ``mode`` ("exact", "series",
    "roulette") in training and in evaluation mode, e.g. to train a Residual Flow on 2-D
    data with the exact log-det; ``rng`` reseeds the training estimators. Returns ``flow``.
    (Not recorded in ``flow.config``: a saved and loaded flow is back to its own modes.)"""
    from .bijectors.residual import LOGDET_MODES, ResidualBlock
    if mode not in LOGDET_MODES:
        raise ValueError(f"set_logdet: expected mode in {LOGDET_MODES}, got {mode!r}")
    stack = [flow]
    while stack:
        module = stack.pop()
        if isinstance(module, ResidualBlock):
            module.logdet_mode = module.eval_logdet = mode
            if rng is not None:
                module.rng = rng
        stack.extend(child for _, child in module.children())
    return flow


def planar(dim, n_layers=8, rng=None, dtype=np.float64):
    r"""A stack of ``n_layers`` planar flows on a standard normal base (Rezende and Mohamed
    2015, arXiv:1505.05770).

    Built for the sampling direction: ``sample`` and the density of its own samples are
    closed-form, the density of any other point solves one scalar equation per layer
    (``bijectors.Planar``). Train it by reverse KL (``train.fit_reverse_kl``).
    """
    from .bijectors import Planar
    return _simple_flow("planar", Planar, dim, n_layers, rng, dtype)


def radial(dim, n_layers=8, rng=None, dtype=np.float64):
    r"""A stack of ``n_layers`` radial flows on a standard normal base (Rezende and Mohamed
    2015, arXiv:1505.05770); see ``bijectors.Radial``.
    """
    from .bijectors import Radial
    return _simple_flow("radial", Radial, dim, n_layers, rng, dtype)


def ffjord(dim, hidden=(64, 64), n_steps=8, n_blocks=1, n_layers=None, rng=None,
           dtype=np.float64, gradient="discrete", adjoint_tol=None, trace="exact",
           activation="tanh"):
    r"""A continuous normalizing flow (Chen et al. 2018, arXiv:1806.07366; FFJORD, Grathwohl
    et al. 2019, arXiv:1810.01367) on a standard normal base.

    ``n_blocks`` ``CNF`` blocks, each integrating its own field v(x, t) (an MLP of [x, t]
    with widths ``hidden`` and ``activation`` "tanh" or "sine") from t = 0 to 1 with ``n_steps`` fixed RK4 steps, the log-det by
    the exact trace (D Jacobian-vector products per field evaluation: for small D), or with
    ``trace="hutchinson"`` by FFJORD's estimator in training mode (one probe, one
    Jacobian-vector product per evaluation whatever D; ``eval()`` still takes the exact
    trace, so ``log_prob`` is the density). Trained by default by
    backpropagating through the RK4 steps (discretise-then-optimise), and with a forward
    fixed step rather than FFJORD's adaptive dopri5: the density is that of the discrete map's
    RK4 trace integral, within O(h^4) of the discrete map's own (``bijectors.cnf``).
    ``n_layers`` is an alias of ``n_blocks`` (the CLI's ``--n-layers``). ``gradient="adjoint"``
    trains with the adjoint method instead (``bijectors.cnf.cnf_adjoint_backward``: O(1) memory
    in the steps, the continuous flow's gradient within the solver's error), its backward ODE
    solved by RK4 in ``n_steps`` steps, or by dopri5 at ``adjoint_tol = (rtol, atol)``.

        log p(x) = log N(z; 0, I) + sum_k int_0^1 tr(dv_k/dx) dt
    """
    from .bijectors import CNF
    if int(dim) != dim or dim < 1:
        raise ValueError(f"ffjord: expected a positive dim, got {dim!r}")
    n_blocks = _blocks(n_blocks, n_layers, "ffjord")
    rng = np.random.default_rng() if rng is None else rng
    blocks = [CNF(int(dim), hidden, n_steps, rng, dtype, gradient, adjoint_tol, trace,
                  activation) for _ in range(n_blocks)]
    config = dict(model="ffjord", dim=int(dim), hidden=list(hidden), n_steps=int(n_steps),
                  n_blocks=n_blocks, dtype=np.dtype(dtype).name, gradient=gradient,
                  adjoint_tol=None if adjoint_tol is None else list(blocks[0].adjoint_tol),
                  trace=trace, activation=activation)
    return Flow(Chain(blocks), StandardNormal(int(dim), dtype), config)


def flow_matching(dim, hidden=(64, 64), n_steps=8, rng=None, dtype=np.float64, trace="exact",
                  activation="tanh"):
    r"""A continuous flow to train by flow matching (Lipman et al. 2023, arXiv:2210.02747;
    rectified flow, Liu et al. 2023, arXiv:2209.03003) on a standard normal base.

    The architecture is ``ffjord``'s with one block: a ``CNF`` whose field v(x, t) (an MLP of
    [x, t], widths ``hidden``, ``activation`` "tanh" or "sine") is integrated from t = 0 (data) to 1 (noise) with
    ``n_steps`` RK4 steps and the exact trace (``trace="hutchinson"``: Hutchinson's estimate
    in training mode, as ``ffjord``; training by flow matching never takes the trace). What
    differs is the training:
    ``train.fit_flow_matching`` regresses v on the straight paths x_t = (1 - t) x_0 + t x_1
    (``flow_matching``), with no ODE solve; ``train.fit`` (maximum likelihood) works too.

        log p(x) = log N(z; 0, I) + int_0^1 tr(dv/dx) dt,   z = x(1)
    """
    from .bijectors import CNF
    if int(dim) != dim or dim < 1:
        raise ValueError(f"flow_matching: expected a positive dim, got {dim!r}")
    rng = np.random.default_rng() if rng is None else rng
    config = dict(model="flow_matching", dim=int(dim), hidden=list(hidden),
                  n_steps=int(n_steps), dtype=np.dtype(dtype).name, trace=trace,
                  activation=activation)
    return Flow(Chain([CNF(int(dim), hidden, n_steps, rng, dtype, trace=trace,
                           activation=activation)]),
                StandardNormal(int(dim), dtype), config)


# ------------------------------------------------------------------ multi-scale image flows
def _check_shape(shape, levels, where):
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{where}: expected shape (C, H, W) of positive sizes, got {shape!r}")
    if isinstance(levels, bool) or int(levels) != levels or levels < 1:
        raise ValueError(f"{where}: expected a positive number of levels, got {levels!r}")
    step = 2 ** int(levels)
    if shape[1] % step or shape[2] % step:
        raise ValueError(f"{where}: {levels} levels squeeze the image {levels} times, so H and "
                         f"W must be multiples of {step}; got shape {shape}")
    return shape, int(levels)


def _image_flow(name, shape, level_list, pixel_levels, logit_alpha, config, dtype):
    dim = int(np.prod(shape))
    layers = []
    if pixel_levels is not None:  # dequantised pixels in [0, L) -> (0, 1) -> logit, as ``maf``
        layers += [ScaleToUnit(dim, pixel_levels), Logit(dim, logit_alpha)]
    layers.append(MultiScale(shape, level_list))
    config = dict(model=name, shape=list(shape), **config, pixel_levels=pixel_levels,
                  logit_alpha=logit_alpha, dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(dim, dtype), config)


def glow(shape=(1, 8, 8), levels=2, depth=8, hidden=64, activation="relu", pixel_levels=None,
         logit_alpha=0.05, coupling="affine", n_bins=8, bound=4.0, rng=None, dtype=np.float64):
    r"""Glow (Kingma, Dhariwal 2018, arXiv:1807.03039) on images of ``shape`` (C, H, W).

    ``levels`` levels, each a ``Squeeze``, ``depth`` steps of flow (``ActNorm``,
    ``LUInvertible1x1Conv``, ``GlowCoupling`` with ``hidden`` channels), and, except the last,
    a ``Split`` whose half of the channels leaves the flow with Glow's learned prior
    (``bijectors.glow_levels``, ``bijectors.MultiScale``). The flow acts on flattened images
    (N, C H W); with ``pixel_levels`` it models dequantised pixels as ``maf`` does.

    ``coupling="spline"`` replaces every ``GlowCoupling`` by an ``ImageSplineCoupling`` (the
    same channel split and conditioner, a rational-quadratic spline of ``n_bins`` bins on
    [-``bound``, ``bound``] per transformed element, the identity outside): the Glow-like
    neural spline flow of Durkan et al. (2019, arXiv:1906.04032, section 5.3). The coupling
    acts after an ``ActNorm``, which ``data_init`` sets so that each channel has mean 0 and
    standard deviation 1 on the first batch, and an orthogonal-at-first 1x1 convolution, so
    its inputs are about unit-scale whatever the pixels' logit range (about [-3, 3] for
    ``logit_alpha = 0.05``). ``bound = 4`` then covers four standard deviations, so nearly all
    of them fall inside the splines rather than in the identity tails, while the K bins,
    2B / K = 1 wide for K = 8, stay narrow enough to bend the density within one standard
    deviation. (``nsf`` also uses 4, there for the logits themselves.) ``n_bins`` and
    ``bound`` are recorded but unused for ``coupling="affine"``.

    ActNorm is initialised from data: ``train.fit`` calls ``flow.data_init`` on a batch
    before the first step. Sample at a temperature with ``flow.sample(n, rng, temperature)``.
    """
    shape, levels = _check_shape(shape, levels, "glow")
    depth = _check_layers(depth, "glow (depth)")
    rng = np.random.default_rng() if rng is None else rng
    level_list = glow_levels(shape, levels, depth, int(hidden), activation, rng, dtype,
                             coupling, n_bins, bound)
    config = dict(levels=levels, depth=depth, hidden=int(hidden), activation=activation,
                  coupling=coupling, n_bins=int(n_bins), bound=float(bound))
    return _image_flow("glow", shape, level_list, pixel_levels, logit_alpha, config, dtype)


def realnvp_image(shape=(1, 8, 8), scales=2, hidden=32, n_blocks=2, net="resnet",
                  activation="relu", s_max=3.0, pixel_levels=None, logit_alpha=0.05, rng=None,
                  dtype=np.float64):
    r"""RealNVP's multi-scale architecture (Dinh et al. 2016, section 3.6) on images.

    Each scale but the last: 3 checkerboard couplings, ``Squeeze``, 3 channel couplings, then
    half of the channels is factored out; the last scale: 4 checkerboard couplings
    (``bijectors.realnvp_levels``). Couplings condition on RealNVP's small ResNet
    (``net="resnet"``: ``n_blocks`` residual blocks of ``hidden`` channels) or on a plain
    ``ConvNet`` (``net="convnet"``). Standard normal prior on every factored-out part.
    """
    shape, scales = _check_shape(shape, scales, "realnvp_image")
    if net not in ("resnet", "convnet"):
        raise ValueError(f"realnvp_image: expected net 'resnet' or 'convnet', got {net!r}")
    rng = np.random.default_rng() if rng is None else rng
    level_list = realnvp_levels(shape, scales, int(hidden), int(n_blocks), activation, s_max,
                                net, rng, dtype)
    config = dict(scales=scales, hidden=int(hidden), n_blocks=int(n_blocks), net=net,
                  activation=activation, s_max=s_max)
    return _image_flow("realnvp_image", shape, level_list, pixel_levels, logit_alpha, config,
                       dtype)


MODELS = {"nice": nice, "realnvp": realnvp, "maf": maf, "iaf": iaf, "planar": planar,
          "radial": radial, "nsf": nsf, "nsf_ar": nsf_ar, "iresnet": iresnet,
          "resflow": resflow, "impflow": impflow, "ffjord": ffjord,
          "flow_matching": flow_matching, "glow": glow,
          "realnvp_image": realnvp_image}
IMAGE_MODELS = ("glow", "realnvp_image")  # built from shape=(C, H, W), not dim


def build(config):
    """Rebuild the (untrained) flow described by ``config`` (a ``flow.config`` dict)."""
    kwargs = dict(config)
    name = kwargs.pop("model", None)
    if name not in MODELS:
        raise ValueError(f"build: expected config['model'] in {sorted(MODELS)}, got {name!r}")
    kwargs["dtype"] = np.dtype(kwargs.get("dtype", "float64"))
    return MODELS[name](rng=np.random.default_rng(0), **kwargs)


# ------------------------------------------------------------------ Rezende and Mohamed (2015)
def _simple_flow(name, layer_class, dim, n_layers, rng, dtype):
    if int(dim) != dim or dim < 1:
        raise ValueError(f"{name}: expected a positive dim, got {dim!r}")
    n_layers = _check_layers(n_layers, name)
    rng = np.random.default_rng() if rng is None else rng
    layers = [layer_class(int(dim), rng=rng, dtype=dtype) for _ in range(int(n_layers))]
    config = dict(model=name, dim=int(dim), n_layers=int(n_layers), dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(int(dim), dtype), config)
