r"""Maximum-likelihood training: minibatch NLL, Adam or SGD, gradient clipping, a cosine
learning-rate schedule, and a guard against non-finite losses.
"""
import math

import numpy as np
from tqdm import tqdm

from .core import check_array
from .optim import SGD, Adam, clip_grad_norm


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the model keeps its last finite parameters."""


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


def fit(flow, data, steps=1000, batch_size=256, lr=1e-3, rng=None, val_data=None,
        optimizer="adam", schedule="cosine", warmup=0, clip=100.0, eval_every=250,
        progress=True):
    r"""Train ``flow`` by maximum likelihood on ``data`` (N, D).

    Each step: take the next ``batch_size`` rows of ``data`` in a shuffled order (shuffled
    epochs: one random permutation of the rows per pass over ``data``, so every row is used
    once per pass; the last ``len(data) % batch_size`` rows of a pass are skipped), compute
    the mean NLL and its gradients (``flow.loss_and_grad``), clip their global norm to
    ``clip``, take one optimizer step at the scheduled learning rate.

    If the loss or the gradient norm is NaN or infinite, the parameters from before the last
    step (the last ones with a finite loss) are put back and ``NonFiniteLossError`` is raised.

    Returns
    -------
    history : dict of lists
        ``loss`` (every step), and every ``eval_every`` steps ``step``, ``train_nll`` (mean of
        the minibatch losses since the previous report) and ``val_nll`` (if ``val_data``).
    """
    data = check_array(data, "fit (data)", flow.dim).astype(flow.dtype, copy=False)
    if val_data is not None:
        val_data = check_array(val_data, "fit (val_data)", flow.dim)
    if int(steps) != steps or steps < 1 or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"fit: expected positive integers for steps and batch_size, got "
                         f"{steps!r} and {batch_size!r}")
    rng = np.random.default_rng() if rng is None else rng
    params = list(flow.parameters())
    if optimizer == "adam":
        opt = Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = SGD(params, lr=lr)
    else:
        raise ValueError(f"fit: expected optimizer 'adam' or 'sgd', got {optimizer!r}")
    last_good = [p.copy() for _, p, _ in params]
    history = {"loss": [], "step": [], "train_nll": [], "val_nll": []}
    batch_size = min(int(batch_size), len(data))
    order, start = rng.permutation(len(data)), 0
    bar = tqdm(range(int(steps)), disable=not progress, desc="NLL", leave=False)
    for step in bar:
        if start + batch_size > len(data):  # a pass is over: reshuffle
            order, start = rng.permutation(len(data)), 0
        batch = data[order[start:start + batch_size]]
        start += batch_size
        loss = flow.loss_and_grad(batch)
        grad_norm = clip_grad_norm(params, clip)
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            for (_, p, _), good in zip(params, last_good):
                p[...] = good
            bar.close()
            raise NonFiniteLossError(
                f"fit: the loss became {loss} (gradient norm {grad_norm}) at step {step}; "
                f"stopped and restored the parameters of step {step - 1}. Try a smaller lr "
                f"(now {lr}) or a tighter clip (now {clip}).")
        for (_, p, _), good in zip(params, last_good):
            np.copyto(good, p)
        opt.lr = learning_rate(step, steps, lr, schedule, warmup)
        opt.step()
        history["loss"].append(loss)
        if progress and (step + 1) % 25 == 0:  # the running NLL: mean of the last 25 batches
            bar.set_postfix(nll=f"{np.mean(history['loss'][-25:]):.3f}", refresh=False)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            recent = history["loss"][-eval_every:]
            history["step"].append(step + 1)
            history["train_nll"].append(float(np.mean(recent)))
            if val_data is not None:
                history["val_nll"].append(nll(flow, val_data))
                if progress:
                    bar.write(f"step {step + 1}: train NLL {history['train_nll'][-1]:.4f}, "
                              f"validation NLL {history['val_nll'][-1]:.4f}")
    bar.close()
    return history
