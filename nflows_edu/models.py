r"""Paper configurations, each returning a ``Flow``.

Every builder records its arguments in ``flow.config`` so ``nflows_edu.save`` / ``load`` can
rebuild the same architecture and then copy the saved parameters into it.
"""
import numpy as np

from .bijectors import (IAF, MAF, AdditiveCoupling, AffineCoupling, BatchNorm, Logit, Scaling,
                        ScaleToUnit, alternating_mask)
from .core import Chain, Flow
from .distributions import StandardLogistic, StandardNormal


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

        log p(x) = sum_j log p_logistic(z_j) + sum_j s_j,   z = exp(s) * f_couplings(x)
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


MODELS = {"nice": nice, "realnvp": realnvp, "maf": maf, "iaf": iaf}


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
    if int(n_layers) != n_layers or n_layers < 1:
        raise ValueError(f"{name}: expected a positive n_layers, got {n_layers!r}")
    rng = np.random.default_rng() if rng is None else rng
    layers = [layer_class(int(dim), rng=rng, dtype=dtype) for _ in range(int(n_layers))]
    config = dict(model=name, dim=int(dim), n_layers=int(n_layers), dtype=np.dtype(dtype).name)
    return Flow(Chain(layers), StandardNormal(int(dim), dtype), config)


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


MODELS.update(planar=planar, radial=radial)
