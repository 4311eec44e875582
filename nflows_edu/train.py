r"""Maximum-likelihood training: minibatch NLL, Adam or SGD, gradient clipping, a cosine
learning-rate schedule, and a guard against non-finite losses.
"""
import contextlib
import math

import numpy as np
from tqdm import tqdm

from .bijectors.residual import ConvergenceError
from .core import NonFiniteError, check_array
from .fast import FusedAdam, keep_freed_memory
from .nn import SpectralLinear
from .optim import SGD, clip_grad_norm
from .threads import blas_threads


class NonFiniteLossError(FloatingPointError):
    """Training diverged (a NaN or infinite loss, non-finite parameters, or a loss that
    exploded); ``fit`` stopped and put back the parameters from before the step that did it."""


TrainingDiverged = NonFiniteLossError

# What a training step raises when the parameters have left the region where the flow is
# defined: a layer refusing non-finite activations (``NonFiniteError``), a root finder that no
# longer converges (``ConvergenceError``), a log-det of an overflowing Jacobian (LinAlgError).
# ``fit`` ends all of them as it ends a NaN loss. Every other exception is a mistake in the
# call (a shape, an argument) and goes through unchanged.
DIVERGED = (NonFiniteError, ConvergenceError, np.linalg.LinAlgError)


class _LastGood:
    r"""The parameters and float buffers of a flow as they were before the current step.

    ``save()`` before each update; ``diverged(step, why)`` puts them back and returns the
    ``NonFiniteLossError`` to raise, naming the step that diverged and the one kept.
    """

    def __init__(self, flow, params, where, steps, advice):
        # the float buffers a step changes: BatchNorm's running averages, the power iteration
        self.arrays = ([p for _, p, _ in params]
                       + [b for _, b in flow.named_buffers() if b.dtype.kind == "f"])
        self.copies = [a.copy() for a in self.arrays]
        self.where, self.steps, self.advice = where, steps, advice

    def save(self):
        for a, good in zip(self.arrays, self.copies):
            np.copyto(good, a)

    def restore(self):
        for a, good in zip(self.arrays, self.copies):
            a[...] = good

    def diverged(self, step, why, kept=None):
        """Put the saved arrays back; the error for divergence found at ``step`` (0-based),
        with the parameters of step ``kept`` (1-based; the step before, by default) back."""
        self.restore()
        kept = step if kept is None else kept
        kept = ("the initial parameters" if kept == 0 else
                f"the parameters of step {kept}, the last with an acceptable loss")
        return NonFiniteLossError(
            f"{self.where}: training diverged at step {step + 1} of {self.steps}: {why}. "
            f"Stopped and put back {kept}. {self.advice}")


def log_prob(flow, data, batch_size=4096):
    """``flow.log_prob`` of ``data`` (N, D) in batches, so a million points fit in memory.

    Batches of 4096 keep each layer's activations in the CPU's cache: a million points through
    the demo's float32 RealNVP took 2.7 s of CPU time in batches of 4096 against 3.7-4.3 s in
    batches of 65,536 (measured in one run, one thread).
    """
    data = check_array(data, "log_prob", flow.dim)
    return np.concatenate([flow.log_prob(data[i:i + batch_size])
                           for i in range(0, len(data), batch_size)])


def nll(flow, data, batch_size=4096):
    """Mean negative log-likelihood (nats per example) of ``data`` (N, D), in batches."""
    return float(-log_prob(flow, data, batch_size).mean())


def learning_rate(step, steps, lr, schedule="cosine", warmup=0):
    r"""lr at ``step`` (0-based): linear warm-up, then constant or cosine decay to 0.

    cosine: lr * 0.5 * (1 + cos(pi * step / steps))
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * step / steps))
    raise ValueError(f"learning_rate: expected schedule 'cosine' or 'constant', got {schedule!r}")


def _check_fit_arguments(steps, batch_size, lr, clip, eval_every, warmup, diverge,
                         betas=(0.9, 0.999), where="fit"):
    def is_int(v, low):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low

    def is_positive(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and 0 < v < math.inf

    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1),
                             ("eval_every", eval_every, 1), ("warmup", warmup, 0)):
        if not is_int(value, low):
            raise ValueError(f"{where}: expected an integer {name} >= {low}, got {value!r}")
    for name, value in (("lr", lr), ("diverge", diverge)):
        if not is_positive(value):
            raise ValueError(f"{where}: expected a positive finite {name}, got {value!r}")
    if clip is not None and not is_positive(clip):
        raise ValueError(f"{where}: expected clip None (no clipping) or a positive finite "
                         f"gradient norm, got {clip!r}")
    numbers = (float, int, np.floating, np.integer)
    if not (np.ndim(betas) == 1 and len(betas) == 2
            and all(isinstance(b, numbers) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"{where}: expected Adam's betas as two numbers in [0, 1), got "
                         f"{betas!r}")


def shuffled_batches(data, batch_size, rng):
    """Yield batches of ``batch_size`` rows of ``data`` without end, in shuffled epochs: one
    random permutation of the rows per pass, every row used once per pass, the last
    ``len(data) % batch_size`` rows of a pass skipped."""
    while True:
        order = rng.permutation(len(data))
        for start in range(0, len(data) - batch_size + 1, batch_size):
            yield data[order[start:start + batch_size]]


def _interrupted(guard, history, bar):
    """Ctrl-C: it may land inside the optimizer's in-place update, so go back to the last
    parameters that a whole step produced, and say so."""
    guard.restore()
    history["interrupted"] = True
    bar.write(f"interrupted after {len(history['loss'])} steps; keeping the parameters of the "
              "last completed step")


def _check_last_update(params, history, stop):
    """The last update, which no later step has looked at, must leave finite parameters."""
    if not _all_finite(params):
        done = len(history["loss"])
        stop(done - 1, "its update made the parameters non-finite", kept=done)


def _all_finite(params):
    return all(np.isfinite(p).all() for _, p, _ in params)


def _converge_power_iterations(flow):
    """Start every spectral normalisation's power iteration from the exact singular vectors of
    its weights (``SpectralLinear.converge``): it tracks weights that move a little per step,
    not weights that moved before training started."""
    for module in flow.modules():
        if isinstance(module, SpectralLinear):
            module.converge()


def fit(flow, data, steps=1000, batch_size=256, lr=1e-3, rng=None, val_data=None,
        optimizer="adam", schedule="cosine", warmup=0, clip=100.0, eval_every=250,
        keep_best=False, diverge=1e3, threads="auto", progress=True, betas=(0.9, 0.999),
        ema=None):
    r"""Train ``flow`` by maximum likelihood on ``data`` (N, D).

    Each step: take the next ``batch_size`` rows of ``data`` in a shuffled order (shuffled
    epochs: one random permutation of the rows per pass over ``data``, so every row is used
    once per pass; the last ``len(data) % batch_size`` rows of a pass are skipped), compute
    the mean NLL and its gradients (``flow.loss_and_grad``), clip their global norm to
    ``clip``, take one optimizer step at the scheduled learning rate. Before the first step, a
    flow with a layer initialised from data (Glow's ``ActNorm``, not yet initialised) gets
    ``flow.data_init`` on up to 512 random rows of ``data``.

    A diverging run stops: if the loss or the gradient norm is NaN or infinite, the
    parameters are no longer finite, or the loss exceeds the lowest loss so far by more than
    ``diverge`` nats, the parameters from before the step that did it are put back and
    ``NonFiniteLossError`` is raised, saying so. Ctrl-C (``KeyboardInterrupt``) stops cleanly
    too: the parameters of the last completed step are kept, ``history["interrupted"]`` is
    True and ``fit`` returns.

    Parameters
    ----------
    val_data : ndarray (M, D), optional
        Its NLL is computed every ``eval_every`` steps.
    keep_best : bool
        With ``val_data``: at the end, put back the parameters with the lowest validation
        NLL (small data sets overfit). ``history["best_step"]`` says which step that was.
    threads : "auto", int or None
        BLAS threads during training (``threads.blas_threads``): "auto" picks one thread for
        small matrices, where several threads only wait on each other, and all cores for
        large ones; None leaves the BLAS library's own setting.
    betas : (float, float)
        Adam's decay rates of the running mean and the running square of the gradient.
        A shorter memory for the square (0.99) helped ``maf(2)`` on checkerboard
        (``recipes.TOY_DEFAULTS`` says by how much).
    ema : float in (0, 1), optional
        Polyak averaging (``ParameterAverage``): keep a running average of the parameters
        with this decay, validate it (not the latest parameters), and return it (the best
        validated average with ``keep_best``). The steps' noise at a high learning rate
        averages out.

    Returns
    -------
    history : dict of lists
        ``loss`` (every step), and every ``eval_every`` steps ``step``, ``train_nll`` (mean of
        the minibatch losses since the previous report) and ``val_nll`` (if ``val_data``).
    """
    data = check_array(data, "fit (data)", flow.dim).astype(flow.dtype, copy=False)
    if val_data is not None:
        val_data = check_array(val_data, "fit (val_data)", flow.dim)
    _check_fit_arguments(steps, batch_size, lr, clip, eval_every, warmup, diverge, betas)
    if ema is not None and not (isinstance(ema, (float, np.floating)) and 0 < ema < 1):
        raise ValueError(f"fit: expected ema None or a decay in (0, 1), got {ema!r}")
    if keep_best and val_data is None:
        raise ValueError("fit: keep_best=True needs val_data to choose the best parameters")
    rng = np.random.default_rng() if rng is None else rng
    _converge_power_iterations(flow)
    if needs_data_init(flow):  # Glow's ActNorm: initialised from a first batch, once
        flow.data_init(data[rng.choice(len(data), min(len(data), 512), replace=False)])
    params = list(flow.parameters())
    if optimizer == "adam":
        opt = FusedAdam(params, lr=lr, betas=tuple(betas))  # optim.Adam's, several times faster
    elif optimizer == "sgd":
        opt = SGD(params, lr=lr)
    else:
        raise ValueError(f"fit: expected optimizer 'adam' or 'sgd', got {optimizer!r}")
    keep_freed_memory()  # saves page faults in every step (fast.py says how much)
    with blas_threads(threads, flow, batch_size):
        return _fit_loop(flow, data, params, opt, steps, min(int(batch_size), len(data)), lr,
                         rng, val_data, schedule, warmup, clip, eval_every, keep_best, diverge,
                         progress, None if ema is None else ParameterAverage(params, ema))


def needs_data_init(flow):
    """True if a layer of ``flow`` waits for its data-dependent initialisation (an ``ActNorm``
    whose buffer ``initialized`` is 0)."""
    return any("initialized" in m.buffers and not m.buffers["initialized"]
               for m in flow.modules())


class ParameterAverage:
    r"""A running (exponential) average of the parameters: Polyak averaging.

    After step t = 1, 2, ...:   a <- a + (1 - beta_t) (p - a),
                                beta_t = min(decay, (1 + t) / (10 + t))
    for every parameter p and its average a (a starts at the initial p). The warm-up of
    beta_t lets the early averages follow the recent parameters rather than the
    initialisation; later, a averages about the last 1 / (1 - decay) steps.

    ``with average.swapped():`` the model holds the averages (evaluate it there), and its
    own parameters are back afterwards; ``load()`` keeps the averages in the model.
    """

    def __init__(self, params, decay):
        self.params = [p for _, p, _ in params]
        self.averages = [p.copy() for p in self.params]
        self.decay, self.t = float(decay), 0

    def update(self):
        self.t += 1
        beta = min(self.decay, (1 + self.t) / (10 + self.t))
        for a, p in zip(self.averages, self.params):
            a += (1 - beta) * (p - a)

    def load(self):
        for p, a in zip(self.params, self.averages):
            p[...] = a

    @contextlib.contextmanager
    def swapped(self):
        saved = [p.copy() for p in self.params]
        self.load()
        try:
            yield
        finally:
            for p, own in zip(self.params, saved):
                p[...] = own


def _fit_loop(flow, data, params, opt, steps, batch_size, lr, rng, val_data, schedule, warmup,
              clip, eval_every, keep_best, diverge, progress, average=None):
    guard = _LastGood(flow, params, "fit", steps, f"Try a smaller learning rate (now {lr:g}) or "
                      f"a tighter gradient clip (now {clip}).")
    best = flow.state_dict() if keep_best else None
    history = {"loss": [], "step": [], "train_nll": [], "val_nll": [], "interrupted": False}
    lowest = math.inf
    batches = shuffled_batches(data, batch_size, rng)
    bar = tqdm(range(int(steps)), disable=not progress, desc="NLL", leave=False)

    def stop(step, why, cause=None, kept=None):
        bar.close()
        raise guard.diverged(step, why, kept) from cause

    # A diverging step overflows somewhere (the optimizer's update, a layer's exp): the guard
    # below sees the result and stops with one message, so NumPy's warnings are not shown.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            for step in bar:
                batch = next(batches)
                try:
                    loss = flow.loss_and_grad(batch)
                except DIVERGED as err:
                    stop(step, f"the last update broke the flow ({err})", err)
                grad_norm = clip_grad_norm(params, clip)
                if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                    stop(step, f"the loss became {loss} (gradient norm {grad_norm})")
                if loss > lowest + diverge:
                    stop(step, f"the loss exploded to {loss:.4g}, {loss - lowest:.3g} nats above "
                         f"its lowest value so far (the limit is diverge={diverge:g})")
                lowest = min(lowest, loss)
                guard.save()
                opt.lr = learning_rate(step, steps, lr, schedule, warmup)
                opt.step()
                if average is not None:
                    average.update()
                history["loss"].append(loss)
                if progress and (step + 1) % 25 == 0:  # running NLL: mean of the last 25 batches
                    bar.set_postfix(nll=f"{np.mean(history['loss'][-25:]):.3f}", refresh=False)
                if (step + 1) % eval_every == 0 or step + 1 == steps:
                    with average.swapped() if average is not None else contextlib.nullcontext():
                        _evaluate(flow, history, step, eval_every, val_data, best, bar, progress)
        except KeyboardInterrupt:
            _interrupted(guard, history, bar)
        _check_last_update(params, history, stop)
    bar.close()
    if best is not None and history["val_nll"]:
        flow.load_state_dict(best)
        i = int(np.argmin(history["val_nll"]))
        history["best_step"], history["best_val_nll"] = history["step"][i], history["val_nll"][i]
    elif average is not None:
        average.load()
    return history


def _evaluate(flow, history, step, eval_every, val_data, best, bar, progress):
    """Record the training NLL since the last report and the validation NLL (in evaluation
    mode: BatchNorm uses its running averages and leaves them alone); remember the parameters
    and buffers if they are the best so far."""
    recent = history["loss"][-eval_every:]
    history["step"].append(step + 1)
    history["train_nll"].append(float(np.mean(recent)))
    if val_data is None:
        return
    training = flow.training
    flow.eval()
    val = nll(flow, val_data)
    flow.train(training)
    if best is not None and (not history["val_nll"] or val < min(history["val_nll"])):
        best.update(flow.state_dict())
    history["val_nll"].append(val)
    if progress:
        bar.write(f"step {step + 1}: train NLL {history['train_nll'][-1]:.4f}, "
                  f"validation NLL {val:.4f}")


# ------------------------------------------------------------------ reverse KL (sampling direction)
def _check_targets(flow, where):
    if any(True for _ in flow.base.parameters()):
        raise ValueError(f"{where}: expected a base distribution without parameters (the "
                         "samples z are drawn from a fixed base), got "
                         f"{type(flow.base).__name__} with parameters")
    if "inverse" not in flow.bijector.vjps:
        raise ValueError(f"{where}: the flow's sampling direction (inverse) has no VJP "
                         f"(vjps = {flow.bijector.vjps}); reverse KL trains through it")


def reverse_kl_loss_and_grad(flow, z, log_target, grad_log_target, beta=1.0):
    r"""Zero the gradients, then the reverse-KL loss on base samples ``z`` and its gradients.

    With x = f^{-1}(z) (``flow.bijector.inverse``, whose logdet is log|det dx/dz|):

        log q(x) = log p_Z(z) - logdet
        L = mean_n [log q(x_n) - beta * log_target(x_n)]
        dL/dx = -beta * grad_log_target(x) / N,   dL/dlogdet = -1 / N

    (log p_Z(z) does not depend on the parameters: z is fixed.) With ``beta = 1`` and
    ``log_target = -U``, L + log Z estimates KL(q || p) in nats. Returns L as a float (NaN,
    with no gradients, if the flow maps some z to a non-finite x); the gradients are in
    ``grads``, filled by ``inverse_backward``.
    """
    z = check_array(z, "reverse_kl_loss_and_grad (z)", flow.dim).astype(flow.dtype, copy=False)
    flow.zero_grad()
    n = z.shape[0]
    x, logdet, cache = flow.bijector.inverse(z)
    if not (np.isfinite(x).all() and np.isfinite(logdet).all()):
        return float("nan")  # the flow overflowed: let the caller's guard stop training
    loss = (flow.base.log_prob(z) - logdet - beta * log_target(x)).mean()
    dx = (-beta / n) * np.asarray(grad_log_target(x), dtype=x.dtype)
    flow.bijector.inverse_backward(dx, np.full(n, -1.0 / n, dtype=x.dtype), cache)
    return float(loss)


def reverse_kl(flow, log_target, log_z=0.0, n=100_000, rng=None, batch_size=10_000):
    r"""Monte-Carlo estimate of KL(q || p) = E_q[log q(x) - log_target(x)] + log Z, in nats,
    from ``n`` samples of the flow (each with the density from its own sampling pass).

    Returns ``(kl, standard_error)``.
    """
    rng = np.random.default_rng() if rng is None else rng
    terms = []
    for start in range(0, int(n), batch_size):
        z = flow.base.sample(min(batch_size, int(n) - start), rng).astype(flow.dtype, copy=False)
        x, logdet, _ = flow.bijector.inverse(z)
        terms.append(flow.base.log_prob(z) - logdet - log_target(x))
    terms = np.concatenate(terms).astype(np.float64)
    return float(terms.mean() + log_z), float(terms.std(ddof=1) / np.sqrt(terms.size))


def fit_reverse_kl(flow, log_target, grad_log_target, steps=5000, batch_size=256, lr=1e-3,
                   rng=None, anneal_steps=0, beta0=0.01, schedule="cosine", warmup=0,
                   clip=100.0, eval_every=250, progress=True):
    r"""Fit ``flow`` in its sampling direction to p(x) proportional to exp(log_target(x)).

    Each step draws ``batch_size`` fresh base samples z, maps them by ``flow.bijector.inverse``
    and takes one optimizer (Adam) step on

        L(beta_t) = mean_n [log q(x_n) - beta_t * log_target(x_n)],   x = f^{-1}(z)

    (``reverse_kl_loss_and_grad``), its gradient clipped to global norm ``clip``. No data is
    needed, only the unnormalised log-density and its gradient (``datasets.energy_target``).
    The optional annealing of Rezende and Mohamed (2015), section 6.1, raises the inverse
    temperature linearly, beta_t = min(1, beta0 + t / anneal_steps); ``anneal_steps=0``
    trains at beta = 1 throughout.

    The same guard as ``fit``: if the loss or the gradient norm is NaN or infinite, the
    parameters of the last finite step are put back and ``NonFiniteLossError`` is raised.

    Returns
    -------
    history : dict of lists
        ``loss`` and ``beta`` (every step); every ``eval_every`` steps ``step`` and
        ``kl_minus_log_z`` (mean of the loss since the previous report: KL(q || p) - log Z
        estimated on the training batches; NaN while beta < 1).
    """
    _check_targets(flow, "fit_reverse_kl")
    if int(steps) != steps or steps < 1 or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"fit_reverse_kl: expected positive integers for steps and batch_size, "
                         f"got {steps!r} and {batch_size!r}")
    if anneal_steps < 0 or not 0 < beta0 <= 1:
        raise ValueError(f"fit_reverse_kl: expected anneal_steps >= 0 and 0 < beta0 <= 1, got "
                         f"{anneal_steps!r} and {beta0!r}")
    rng = np.random.default_rng() if rng is None else rng
    _converge_power_iterations(flow)
    params = list(flow.parameters())
    opt = FusedAdam(params, lr=lr)  # optim.Adam's update, faster (as in fit)
    guard = _LastGood(flow, params, "fit_reverse_kl", steps, f"Try a smaller learning rate "
                      f"(now {lr:g}) or a tighter gradient clip (now {clip}).")
    history = {"loss": [], "beta": [], "step": [], "kl_minus_log_z": []}
    bar = tqdm(range(int(steps)), disable=not progress, desc="reverse KL", leave=False)

    def stop(step, why, cause=None, kept=None):
        bar.close()
        raise guard.diverged(step, why, kept) from cause

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # as in fit
        for step in bar:
            beta = 1.0 if anneal_steps == 0 else min(1.0, beta0 + step / anneal_steps)
            z = flow.base.sample(int(batch_size), rng)
            try:
                loss = reverse_kl_loss_and_grad(flow, z, log_target, grad_log_target, beta)
            except DIVERGED as err:
                stop(step, f"the last update broke the flow ({err})", err)
            grad_norm = clip_grad_norm(params, clip)
            if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                stop(step, f"the loss became {loss} (gradient norm {grad_norm})")
            guard.save()
            opt.lr = learning_rate(step, steps, lr, schedule, warmup)
            opt.step()
            history["loss"].append(loss)
            history["beta"].append(beta)
            if progress and (step + 1) % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(history['loss'][-25:]):.3f}", refresh=False)
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                recent = history["loss"][-eval_every:]
                at_one = all(b == 1.0 for b in history["beta"][-len(recent):])
                history["step"].append(step + 1)
                history["kl_minus_log_z"].append(float(np.mean(recent)) if at_one
                                                 else float("nan"))
        if not _all_finite(params):
            stop(steps - 1, "its update made the parameters non-finite", kept=steps)
    bar.close()
    return history


# ------------------------------------------------------------------ flow matching (CNF fields)
def fit_flow_matching(flow, data, steps=1000, batch_size=256, lr=1e-3, rng=None, ot=False,
                      schedule="cosine", warmup=0, clip=100.0, eval_every=250, threads="auto",
                      progress=True, betas=(0.9, 0.999), target="conditional"):
    r"""Train the field of a continuous flow by conditional flow matching on ``data`` (N, D).

    Each step: take the next ``batch_size`` rows x_0 of ``data`` (shuffled epochs, as in
    ``fit``), draw noise x_1 ~ N(0, I) and times t ~ U(0, 1), one per row, optionally re-pair
    x_1 by minibatch optimal transport (``ot=True``: ``flow_matching.ot_pairing``), then one
    Adam step on

        L = (1 / N) sum_n |v(x_t[n], t[n]) - (x_1[n] - x_0[n])|^2,  x_t = (1 - t) x_0 + t x_1

    (``flow_matching.cfm_loss_and_grad``; mean over the batch, sum over the D features), its
    gradient clipped to global norm ``clip``, at the scheduled learning rate. No ODE is solved
    while training; the trained flow's ``log_prob`` and ``sample`` integrate it as before.

    ``target="marginal"`` replaces x_1 - x_0 by ``flow_matching.MarginalTarget``'s estimate of
    E[x_1 - x_0 | x_t] from the whole of ``data``: the same minimiser with far less noise (on
    checkerboard, seed 0, a 128x128x128 sine field in float32: KL 0.035 after 30,000 steps,
    where the conditional target reached 0.071 after 60,000), at the cost of a k-d tree
    search and a softmax over 2048 reference points per step.

    The guard of ``fit``: a NaN or infinite loss or gradient norm, or parameters that are no
    longer finite, stop training with ``NonFiniteLossError`` after putting back the parameters
    from before the step that did it; Ctrl-C keeps the last completed step's parameters.
    (``fit``'s ``diverge`` test, a loss far above its lowest, is not applied: the regression
    loss is noisy by design, its scale set by the data.)

    Parameters
    ----------
    flow : Flow with one ``CNF`` on a standard normal base (``models.flow_matching`` or
        ``models.ffjord`` with one block), a ``CNF``, or its ``TimeField``
        (``flow_matching.field_of``)
    data : ndarray (N, D)
    ot : bool, pair each batch by minibatch optimal transport
    target : "conditional" (x_1 - x_0) or "marginal" (``flow_matching.MarginalTarget``)
    The others as in ``fit``.

    Returns
    -------
    history : dict
        ``loss`` (every step), every ``eval_every`` steps ``step`` and ``train_loss`` (mean of
        the losses since the previous report), and ``interrupted``.
    """
    from .flow_matching import MarginalTarget, cfm_loss_and_grad, field_of, ot_pairing
    where = "fit_flow_matching"
    if target not in ("conditional", "marginal"):
        raise ValueError(f"{where}: expected target 'conditional' or 'marginal', got {target!r}")
    if target == "marginal" and ot:
        raise ValueError(f"{where}: the marginal target averages over independent pairs "
                         "(x_0, x_1); it cannot be combined with ot=True")
    field = field_of(flow, where)
    params = list(field.parameters())
    dtype = params[0][1].dtype
    data = check_array(data, f"{where} (data)", field.dim).astype(dtype, copy=False)
    _check_fit_arguments(steps, batch_size, lr, clip, eval_every, warmup, 1.0, betas, where)
    rng = np.random.default_rng() if rng is None else rng
    batch_size = min(int(batch_size), len(data))
    marginal = MarginalTarget(data, rng) if target == "marginal" else None
    keep_freed_memory()  # as in fit: the marginal target's 2048-wide softmax took 9.3 ms a
    # step without it, 3.0 ms with it (page faults)
    opt = FusedAdam(params, lr=lr, betas=tuple(betas))
    guard = _LastGood(field, params, where, steps, f"Try a smaller learning rate (now {lr:g}) "
                      f"or a tighter gradient clip (now {clip}).")
    history = {"loss": [], "step": [], "train_loss": [], "interrupted": False}
    batches = shuffled_batches(data, batch_size, rng)
    bar = tqdm(range(int(steps)), disable=not progress, desc="flow matching", leave=False)

    def stop(step, why, cause=None, kept=None):
        bar.close()
        raise guard.diverged(step, why, kept) from cause

    with blas_threads(threads, field, batch_size), \
            np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # as in fit
        try:
            for step in bar:
                x0 = next(batches)
                x1 = rng.standard_normal(x0.shape).astype(dtype, copy=False)
                t = rng.uniform(size=batch_size).astype(dtype, copy=False)
                if ot:
                    x1 = ot_pairing(x0, x1)
                field.zero_grad()
                try:
                    loss = cfm_loss_and_grad(field, x0, x1, t, marginal)
                except DIVERGED as err:
                    stop(step, f"the last update broke the field ({err})", err)
                grad_norm = clip_grad_norm(params, clip)
                if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                    stop(step, f"the loss became {loss} (gradient norm {grad_norm})")
                guard.save()
                opt.lr = learning_rate(step, steps, lr, schedule, warmup)
                opt.step()
                history["loss"].append(loss)
                if progress and (step + 1) % 25 == 0:
                    bar.set_postfix(loss=f"{np.mean(history['loss'][-25:]):.3f}", refresh=False)
                if (step + 1) % eval_every == 0 or step + 1 == steps:
                    history["step"].append(step + 1)
                    history["train_loss"].append(float(np.mean(history["loss"][-eval_every:])))
        except KeyboardInterrupt:
            _interrupted(guard, history, bar)
        _check_last_update(params, history, stop)
    bar.close()
    return history
