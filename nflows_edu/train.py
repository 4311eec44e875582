r"""Maximum-likelihood training: minibatch NLL, Adam or SGD, gradient clipping, a cosine
learning-rate schedule, and a guard against non-finite losses.
"""
import math

import numpy as np
from tqdm import tqdm

from .core import check_array
from .fast import FusedAdam, keep_freed_memory
from .optim import SGD, clip_grad_norm
from .threads import blas_threads


class NonFiniteLossError(FloatingPointError):
    """Training diverged (a NaN or infinite loss, non-finite parameters, or a loss that
    exploded); ``fit`` stopped and put back the parameters from before the step that did it."""


TrainingDiverged = NonFiniteLossError


def nll(flow, data, batch_size=4096):
    """Mean negative log-likelihood (nats per example) of ``data`` (N, D), in batches."""
    data = check_array(data, "nll", flow.dim)
    total = sum(-flow.log_prob(data[i:i + batch_size]).sum()
                for i in range(0, len(data), batch_size))
    return float(total / len(data))


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


def _check_fit_arguments(steps, batch_size, lr, clip, eval_every, warmup, diverge):
    def is_int(v, low):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low

    def is_positive(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and 0 < v < math.inf

    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1),
                             ("eval_every", eval_every, 1), ("warmup", warmup, 0)):
        if not is_int(value, low):
            raise ValueError(f"fit: expected an integer {name} >= {low}, got {value!r}")
    for name, value in (("lr", lr), ("diverge", diverge)):
        if not is_positive(value):
            raise ValueError(f"fit: expected a positive finite {name}, got {value!r}")
    if clip is not None and not is_positive(clip):
        raise ValueError(f"fit: expected clip None (no clipping) or a positive finite gradient "
                         f"norm, got {clip!r}")


def _all_finite(params):
    return all(np.isfinite(p).all() for _, p, _ in params)


def fit(flow, data, steps=1000, batch_size=256, lr=1e-3, rng=None, val_data=None,
        optimizer="adam", schedule="cosine", warmup=0, clip=100.0, eval_every=250,
        keep_best=False, diverge=1e3, threads="auto", progress=True):
    r"""Train ``flow`` by maximum likelihood on ``data`` (N, D).

    Each step: take the next ``batch_size`` rows of ``data`` in a shuffled order (shuffled
    epochs: one random permutation of the rows per pass over ``data``, so every row is used
    once per pass; the last ``len(data) % batch_size`` rows of a pass are skipped), compute
    the mean NLL and its gradients (``flow.loss_and_grad``), clip their global norm to
    ``clip``, take one optimizer step at the scheduled learning rate.

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

    Returns
    -------
    history : dict of lists
        ``loss`` (every step), and every ``eval_every`` steps ``step``, ``train_nll`` (mean of
        the minibatch losses since the previous report) and ``val_nll`` (if ``val_data``).
    """
    data = check_array(data, "fit (data)", flow.dim).astype(flow.dtype, copy=False)
    if val_data is not None:
        val_data = check_array(val_data, "fit (val_data)", flow.dim)
    _check_fit_arguments(steps, batch_size, lr, clip, eval_every, warmup, diverge)
    if keep_best and val_data is None:
        raise ValueError("fit: keep_best=True needs val_data to choose the best parameters")
    rng = np.random.default_rng() if rng is None else rng
    params = list(flow.parameters())
    if optimizer == "adam":
        opt = FusedAdam(params, lr=lr)  # optim.Adam's update, several times faster
    elif optimizer == "sgd":
        opt = SGD(params, lr=lr)
    else:
        raise ValueError(f"fit: expected optimizer 'adam' or 'sgd', got {optimizer!r}")
    keep_freed_memory()  # saves page faults in every step (fast.py says how much)
    with blas_threads(threads, flow, batch_size):
        return _fit_loop(flow, data, params, opt, steps, min(int(batch_size), len(data)), lr,
                         rng, val_data, schedule, warmup, clip, eval_every, keep_best, diverge,
                         progress)


def _fit_loop(flow, data, params, opt, steps, batch_size, lr, rng, val_data, schedule, warmup,
              clip, eval_every, keep_best, diverge, progress):
    last_good = [p.copy() for _, p, _ in params]  # the parameters before the current step
    best = [p.copy() for _, p, _ in params] if keep_best else None
    history = {"loss": [], "step": [], "train_nll": [], "val_nll": [], "interrupted": False}
    lowest = math.inf
    order, start = rng.permutation(len(data)), 0
    bar = tqdm(range(int(steps)), disable=not progress, desc="NLL", leave=False)

    def stop(step, why):
        for (_, p, _), good in zip(params, last_good):
            p[...] = good
        bar.close()
        kept = ("the initial parameters" if step == 0 else
                f"the parameters of step {step}, the last with an acceptable loss")
        raise NonFiniteLossError(
            f"fit: training diverged at step {step + 1} of {steps}: {why}. Stopped and put "
            f"back {kept}. Try a smaller learning rate (now {lr:g}) or a tighter gradient clip "
            f"(now {clip}).")

    try:
        for step in bar:
            if start + batch_size > len(data):  # a pass is over: reshuffle
                order, start = rng.permutation(len(data)), 0
            batch = data[order[start:start + batch_size]]
            start += batch_size
            try:
                loss = flow.loss_and_grad(batch)
            except ValueError:
                # a layer refusing non-finite input: the last update broke the parameters
                if _all_finite(params):
                    raise
                stop(step, "the parameters became non-finite")
            grad_norm = clip_grad_norm(params, clip)
            if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                stop(step, f"the loss became {loss} (gradient norm {grad_norm})")
            if loss > lowest + diverge:
                stop(step, f"the loss exploded to {loss:.4g}, {loss - lowest:.3g} nats above "
                     f"its lowest value so far (the limit is diverge={diverge:g})")
            lowest = min(lowest, loss)
            for (_, p, _), good in zip(params, last_good):
                np.copyto(good, p)
            opt.lr = learning_rate(step, steps, lr, schedule, warmup)
            opt.step()
            history["loss"].append(loss)
            if progress and (step + 1) % 25 == 0:  # the running NLL: mean of the last 25 batches
                bar.set_postfix(nll=f"{np.mean(history['loss'][-25:]):.3f}", refresh=False)
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                _evaluate(flow, history, step, eval_every, val_data, params, best, bar, progress)
    except KeyboardInterrupt:
        # Ctrl-C may land inside the optimizer's in-place update: go back to the last
        # parameters that a whole step produced.
        for (_, p, _), good in zip(params, last_good):
            p[...] = good
        history["interrupted"] = True
        bar.write(f"interrupted after {len(history['loss'])} steps; keeping the parameters "
                  "of the last completed step")
    bar.close()
    if best is not None and history["val_nll"]:
        for (_, p, _), b in zip(params, best):
            p[...] = b
        i = int(np.argmin(history["val_nll"]))
        history["best_step"], history["best_val_nll"] = history["step"][i], history["val_nll"][i]
    return history


def _evaluate(flow, history, step, eval_every, val_data, params, best, bar, progress):
    """Record the training NLL since the last report and the validation NLL; remember the
    parameters if they are the best so far."""
    recent = history["loss"][-eval_every:]
    history["step"].append(step + 1)
    history["train_nll"].append(float(np.mean(recent)))
    if val_data is None:
        return
    val = nll(flow, val_data)
    if best is not None and (not history["val_nll"] or val < min(history["val_nll"])):
        for (_, p, _), b in zip(params, best):
            np.copyto(b, p)
    history["val_nll"].append(val)
    if progress:
        bar.write(f"step {step + 1}: train NLL {history['train_nll'][-1]:.4f}, "
                  f"validation NLL {val:.4f}")
