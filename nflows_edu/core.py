r"""The contract every layer follows: ``Module``, ``Bijector``, ``Chain``, ``Inverse``, ``Flow``.

Direction convention
--------------------
``forward`` is the *normalizing* direction, data to noise, ``z = f(x)``; ``inverse`` is the
*generative* direction, ``x = g(z) = f^{-1}(z)``. Both return ``(out, logdet, cache)`` where
``logdet[n] = log|det d(out_n)/d(in_n)|`` for that call's own direction, so

    log p(x) = log p_Z(f(x)) + log|det df/dx|.

Backpropagation is explicit: ``backward(dz, dlogdet, cache)`` is the vector-Jacobian product of
``forward`` (upstream gradients of the loss with respect to ``z`` and to ``logdet``), returns
``dx`` and *adds* parameter gradients into ``self.grads``. ``inverse_backward`` does the same
for ``inverse``. The cache is returned, never stored, so nothing is hidden in the object.
"""
import math
import numbers

import numpy as np


class NonFiniteError(ValueError):
    """An array that should hold finite numbers holds NaN or inf.

    A ``ValueError`` like every bad input, with its own class so that ``train.fit`` can tell
    a diverging run (the parameters, or the activations they produce, left the finite
    numbers) from a mistake in the call (a wrong shape), which it lets through.
    """


def _real_array(x, where):
    r"""``x`` as a float array if it holds real numbers: floats stay as they are; integers,
    booleans, and object arrays of real numbers that convert to float64 *exactly* (Python
    ints and floats, ``Fraction(1, 2)``, NumPy scalars) become float64. Anything else
    (complex, strings, dates, ``Fraction(1, 3)``, an int beyond 2^53) is a ``ValueError``.
    """
    x = np.asarray(x)
    if x.dtype.kind == "O":
        values = x.ravel()
        if not all(isinstance(v, numbers.Real) for v in values):
            bad = next(v for v in values if not isinstance(v, numbers.Real))
            raise ValueError(f"{where}: expected real numbers, got an object array holding "
                             f"{type(bad).__name__} {bad!r}")
        converted = x.astype(np.float64)
        # Python compares an int or a Fraction with a float exactly, so this finds any value
        # that float64 rounds (NaN and inf are left to the finiteness check)
        inexact = [v for v, f in zip(values, converted.ravel().tolist())
                   if math.isfinite(f) and v != f]
        if inexact:
            raise ValueError(f"{where}: expected real numbers that float64 holds exactly, got "
                             f"{inexact[0]!r}, which it would round")
        return converted
    if x.dtype.kind not in "fiub":  # complex, datetime, strings
        raise ValueError(f"{where}: expected real numbers (a float or integer array), got "
                         f"dtype {x.dtype}")
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def check_finite(x, where):
    """Raise ``NonFiniteError`` naming ``where`` if ``x`` holds NaN or inf."""
    if not np.isfinite(x).all():
        raise NonFiniteError(f"{where}: expected finite values, got NaN or inf")


def check_array(x, where, dim=None):
    r"""Return ``x`` as a float array after checking it is a finite, non-empty ``(N, dim)``
    batch of real numbers (``_real_array`` says which inputs convert).

    Raises ``ValueError`` naming ``where`` (the layer or function) and what it expected;
    ``NonFiniteError`` (a ``ValueError``) for NaN or inf.
    """
    expected = f"(N, {dim})" if dim is not None else "(N, D)"
    return _check_batch(x, where, expected, dim, images=False)


def check_images(x, where, channels=None):
    r"""Return ``x`` as a float array after checking it is a finite, non-empty image batch of
    shape ``(N, C, H, W)`` (with ``C == channels`` if given) of real numbers.

    The image counterpart of ``check_array``. Raises ``ValueError`` naming ``where`` (the
    layer or function) and the shape it expected.
    """
    expected = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
    return _check_batch(x, where, expected, channels, images=True)


def _check_batch(x, where, expected, width, images):
    r"""What ``check_array`` and ``check_images`` share: real numbers (``_real_array``), 2 axes
    (vectors) or 4 (images), a non-empty batch (no axis of length 0, for images), finite
    values, and ``width`` entries along axis 1 (features or channels) if given. A vector's
    width is checked with its shape; an image's after its values (a NaN is the more basic
    fault, whatever the layout)."""
    x = _real_array(x, where)
    what, ndim = ("an image batch", 4) if images else ("an array", 2)
    wrong_shape = f"{where}: expected {what} of shape {expected}, got shape {x.shape}"
    wrong_width = width is not None and x.ndim == ndim and x.shape[1] != width
    if x.ndim != ndim or (wrong_width and not images):
        raise ValueError(wrong_shape)
    if images and 0 in x.shape:
        raise ValueError(f"{where}: expected a non-empty image batch of shape {expected}, got "
                         f"shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: expected a non-empty batch of shape {expected}, got N = 0")
    check_finite(x, where)
    if wrong_width:
        raise ValueError(wrong_shape)
    return x


class Module:
    r"""Anything with parameters: ``params`` and ``grads`` dicts of arrays with the same keys.

    Sub-modules are found among the attributes (a ``Module`` or a list of them), so
    ``parameters()`` walks the whole tree and yields ``(qualified_name, param, grad)``.
    ``buffers`` holds arrays that are saved with the model but not trained (a permutation).
    Optimizers update ``param`` and read ``grad`` in place, so neither is ever rebound.
    """

    # Training or evaluation mode (``train()`` / ``eval()``): only layers whose map depends on
    # it read it (``BatchNorm``: batch statistics or running averages).
    training = True

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}

    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode on this module and every
        sub-module; returns ``self``. ``Flow.log_prob`` and ``Flow.sample`` use the mode set."""
        self.training = bool(mode)
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode: the same as ``train(False)``."""
        return self.train(False)

    def add_param(self, name, value):
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def children(self):
        """Yield ``(name, module)`` for the direct sub-modules, in attribute order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def parameters(self, prefix=""):
        """Yield ``(qualified_name, param, grad)`` over this module and all sub-modules."""
        for name, p in self.params.items():
            yield prefix + name, p, self.grads[name]
        for name, child in self.children():
            yield from child.parameters(prefix + name + ".")

    def named_buffers(self, prefix=""):
        """Yield ``(qualified_name, buffer)`` over this module and all sub-modules."""
        for name, b in self.buffers.items():
            yield prefix + name, b
        for name, child in self.children():
            yield from child.named_buffers(prefix + name + ".")

    def zero_grad(self):
        # The same walk as children(), without building names or generators: it runs before
        # every training step, and for a small model the walk costs more than the zeroing.
        for g in self.grads.values():
            g.fill(0)
        for value in vars(self).values():
            if isinstance(value, Module):
                value.zero_grad()
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, Module):
                        item.zero_grad()

    def num_params(self):
        return sum(p.size for _, p, _ in self.parameters())

    def state_dict(self):
        """Copies of every parameter and buffer, by qualified name."""
        state = {name: p.copy() for name, p, _ in self.parameters()}
        state.update({name: b.copy() for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state):
        """Copy arrays from ``state`` into the parameters and buffers, in place."""
        own = {name: p for name, p, _ in self.parameters()}
        own.update(dict(self.named_buffers()))
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing {missing}, "
                             f"unexpected {unexpected}")
        for name, target in own.items():
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name} has shape "
                                 f"{value.shape}, expected {target.shape}")
        backup = self.state_dict()
        for name, target in own.items():
            target[...] = state[name]
        try:
            for module in self.modules():
                module.check_state()
        except ValueError:
            for name, target in own.items():
                target[...] = backup[name]
            raise

    def modules(self):
        """Yield this module and every sub-module."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    def check_state(self):
        """Raise ``ValueError`` if the loaded parameters and buffers do not make a valid module
        (a coupling's mask that its net cannot take); ``load_state_dict`` then undoes the load.
        """


class Bijector(Module):
    r"""An invertible map with a tractable log-determinant.

    Subclasses set ``self.dim`` (the number of features) and implement the four methods below.

    ``vjps`` declares the directions whose vector-Jacobian product the layer provides:
    ``"forward"`` for ``backward``, ``"inverse"`` for ``inverse_backward``. A layer whose
    inverse is sequential (MAF) may leave ``"inverse"`` out; its ``inverse_backward`` then
    raises ``NotImplementedError`` saying which direction trains instead. The checker
    (``gradcheck.check_bijector``) checks every declared direction and fails one that raises.

    Caches hold references, not copies (as in cs231n): an array passed to ``forward`` may be
    part of the cache, so do not modify it in place before the matching ``backward``.
    """

    vjps = ("forward", "inverse")

    def forward(self, x):
        """x (N, D) -> (z (N, D), logdet (N,), cache)."""
        raise NotImplementedError

    def inverse(self, z):
        """z (N, D) -> (x (N, D), logdet (N,), cache)."""
        raise NotImplementedError

    def backward(self, dz, dlogdet, cache):
        """VJP of ``forward``: (dz (N, D), dlogdet (N,)) -> dx (N, D); adds into ``grads``."""
        raise NotImplementedError

    def inverse_backward(self, dx, dlogdet, cache):
        """VJP of ``inverse``: (dx (N, D), dlogdet (N,)) -> dz (N, D); adds into ``grads``."""
        raise NotImplementedError

    def data_init(self, x):
        """Data-dependent initialisation from the batch ``x``, then ``forward(x)``'s output.

        Only layers initialised from data (Glow's ``ActNorm``) override it, to set their
        parameters from the activations that reach them; containers pass it on to their
        layers in order. For every other layer it is just the forward pass.
        """
        return self.forward(x)[0]

    def _check(self, x):
        return check_array(x, type(self).__name__, getattr(self, "dim", None))

    def __repr__(self):
        return f"{type(self).__name__}(dim={getattr(self, 'dim', '?')})"


class Chain(Bijector):
    r"""Composition ``f = f_K o ... o f_1`` of bijectors.

    Forward:  x_0 = x;  x_k = f_k(x_{k-1});  z = x_K;  logdet = sum_k logdet_k
    Inverse:  apply the inverses from the last layer to the first.
    Backward: every layer gets the same ``dlogdet`` (logdet is a plain sum), and ``dz`` flows
              back through the layers in reverse order of application.
    """

    def __init__(self, layers):
        super().__init__()
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Chain: expected at least one layer")
        self.dim = self.layers[0].dim

    @property
    def vjps(self):
        """A direction is differentiable through the chain only if it is for every layer."""
        return tuple(d for d in ("forward", "inverse")
                     if all(d in layer.vjps for layer in self.layers))

    def forward(self, x):
        logdet = 0.0
        caches = []
        for layer in self.layers:
            x, ld, cache = layer.forward(x)
            logdet = logdet + ld
            caches.append(cache)
        return x, logdet, caches

    def data_init(self, x):
        for layer in self.layers:  # each layer sees the activations its predecessors make
            x = layer.data_init(x)
        return x

    def inverse(self, z):
        logdet = 0.0
        caches = []
        for layer in reversed(self.layers):
            z, ld, cache = layer.inverse(z)
            logdet = logdet + ld
            caches.append(cache)
        return z, logdet, caches

    def backward(self, dz, dlogdet, caches):
        for layer, cache in zip(reversed(self.layers), reversed(caches)):
            dz = layer.backward(dz, dlogdet, cache)
        return dz

    def inverse_backward(self, dx, dlogdet, caches):
        # caches[0] belongs to the last layer (applied first by ``inverse``).
        for layer, cache in zip(self.layers, reversed(caches)):
            dx = layer.inverse_backward(dx, dlogdet, cache)
        return dx

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Chain([\n  {inner}\n])"


class Inverse(Bijector):
    r"""Swap the two directions of a bijector (and the two VJPs).

    ``Inverse(b).forward == b.inverse``; the parameters are ``b``'s own.
    """

    def __init__(self, bijector):
        super().__init__()
        self.bijector = bijector
        self.dim = bijector.dim

    @property
    def vjps(self):
        swap = {"forward": "inverse", "inverse": "forward"}
        return tuple(sorted((swap[d] for d in self.bijector.vjps), key=("forward", "inverse").index))

    def forward(self, x):
        return self.bijector.inverse(x)

    def inverse(self, z):
        return self.bijector.forward(z)

    def backward(self, dz, dlogdet, cache):
        return self.bijector.inverse_backward(dz, dlogdet, cache)

    def inverse_backward(self, dx, dlogdet, cache):
        return self.bijector.backward(dx, dlogdet, cache)

    def __repr__(self):
        return f"Inverse({self.bijector!r})"


class Flow(Module):
    r"""A normalizing flow: a bijector ``f`` (data to noise) plus a base distribution ``p_Z``.

    Density:  log p(x) = log p_Z(f(x)) + log|det df/dx|
    Sampling: x = f^{-1}(z),  z ~ p_Z
    Loss:     L = -mean_n log p(x_n)  (negative log-likelihood, nats per example)

    Parameters
    ----------
    bijector : Bijector
        Usually a ``Chain``.
    base : distribution with ``log_prob``, ``sample`` and ``backward``
    config : dict, optional
        How ``nflows_edu.models`` built this flow; ``nflows_edu.io.save`` stores it so the
        flow can be rebuilt by ``load``.
    """

    def __init__(self, bijector, base, config=None):
        super().__init__()
        if bijector.dim != base.dim:
            raise ValueError(f"Flow: bijector has dim {bijector.dim} but base has dim {base.dim}")
        self.bijector = bijector
        self.base = base
        self.dim = bijector.dim
        self.config = config
        self.dtype = next((p.dtype for _, p, _ in self.parameters()), np.dtype(np.float64))

    def _input(self, x, where):
        x = check_array(x, f"Flow.{where}", self.dim)
        with np.errstate(over="ignore"):  # checked on the next line, with a better message
            cast = x.astype(self.dtype, copy=False)
        if not np.isfinite(cast).all():  # finite in float64, beyond the flow's dtype
            raise ValueError(f"Flow.{where}: values beyond the range of this {self.dtype} flow "
                             f"(largest {np.finfo(self.dtype).max:.3g}); got up to "
                             f"{np.abs(x).max():.3g}")
        return cast

    def log_prob(self, x):
        """log p(x) for x (N, D) -> (N,)."""
        x = self._input(x, "log_prob")
        z, logdet, _ = self.bijector.forward(x)
        return self.base.log_prob(z) + logdet

    def data_init(self, x):
        """Initialise the layers that are initialised from data (Glow's ``ActNorm``) on the
        batch ``x`` (N, D), in order, each from the activations that reach it. ``train.fit``
        calls this before the first step if a layer needs it; a trained or loaded flow keeps
        its parameters (an initialised ``ActNorm`` does not initialise again)."""
        self.bijector.data_init(self._input(x, "data_init"))

    def sample(self, n, rng=None, temperature=1.0):
        """n samples x = f^{-1}(z) with z ~ p_Z -> (n, D).

        ``rng`` is a ``numpy.random.Generator`` (``np.random.default_rng(seed)``), or None for
        fresh entropy. ``temperature`` T scales the noise, z = T * z_0 with z_0 ~ p_Z (Glow,
        section 5: T < 1 trades diversity for samples from the high-density core).
        """
        if not (isinstance(temperature, (int, float, np.integer, np.floating))
                and np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"Flow.sample: expected a positive finite temperature, got "
                             f"{temperature!r}")
        if (isinstance(n, bool) or not isinstance(n, (int, np.integer, float, np.floating))
                or not np.isfinite(n) or int(n) != n or n < 1):
            raise ValueError(f"Flow.sample: expected a positive whole number of samples, "
                             f"got {n!r}")
        if rng is None:
            rng = np.random.default_rng()
        elif not isinstance(rng, np.random.Generator):
            raise ValueError(f"Flow.sample: expected rng to be a numpy.random.Generator, such "
                             f"as np.random.default_rng(7), got {rng!r}")
        z = self.base.sample(int(n), rng).astype(self.dtype, copy=False)
        if temperature != 1:
            z = z * self.dtype.type(temperature)
        x, _, _ = self.bijector.inverse(z)
        return x

    def loss_and_grad(self, x):
        r"""Zero the gradients, then compute the mean NLL of ``x`` and its gradients.

        dL/dz = -grad log p_Z(z) / N,  dL/dlogdet = -1/N for every example;
        the base distribution's own parameters (if any) get their gradients on the way.
        Returns the loss as a Python float; gradients are in ``grads`` of every module.
        """
        x = self._input(x, "loss_and_grad")
        self.zero_grad()
        n = x.shape[0]
        z, logdet, cache = self.bijector.forward(x)
        loss = -(self.base.log_prob(z) + logdet).mean()
        dlogp = np.full(n, -1.0 / n, dtype=z.dtype)
        dz = self.base.backward(dlogp, z)
        self.bijector.backward(dz, dlogp, cache)
        return float(loss)

    def __repr__(self):
        return f"Flow({self.bijector!r},\n  base={self.base!r})"
