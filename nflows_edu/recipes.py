r"""Recipes: the training runs behind ``nflows-edu train`` and ``nflows-edu demo``.

A ``Run`` (a dataclass) says what to train, on which data, how and where; ``run(config)``
builds the data and the model, trains, evaluates, saves the model, its pictures and
``metrics.json`` into ``config.out``, and returns the metrics. ``run_training`` (the 2-D
toys) and ``run_digits`` (the 8x8 digits) take the same settings as keyword arguments
(benchmarks and notebooks call them). The command line (``cli.py``) parses its arguments into
a ``Run`` and calls ``run``; the tuning constants below are its defaults.
"""
import inspect
import json
import os
import time
from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import numpy as np

from . import datasets, io, models, train, viz
from .threads import blas_threads, choose_threads

N_TRAIN = 100_000
N_TEST = 1_000_000  # the KL terms have a heavy tail: a million points keep its SE small
N_TEST_FAST = 20_000  # with NFLOWS_EDU_FAST=1 (tests, notebooks in CI)
# The demo's KL: on half a million points its standard error was 0.0006-0.0008 nats (three
# test sets for one trained demo model; a million points: 0.0005-0.0007, a quarter million:
# 0.0008-0.0014, the heavy tail), far below the spread over seeds (about 0.016,
# benchmarks/demo_steps.py), in half the evaluation time: 3.5 of the demo's 31.5 s beside two
# busy processes went to a million points.
N_TEST_DEMO = 500_000
# The demo's run: realnvp(2) for DEMO_STEPS steps at peak learning rate DEMO_LR (batch 512,
# float32). benchmarks/demo_steps.py, 8 seeds on checkerboard: 5000 steps at LR (3e-3) gave
# KL 0.1047 +- 0.0065; 4000 steps at 6e-3 0.0947 +- 0.0035; 3000 steps at 8e-3 0.0991 +-
# 0.0025, a paired difference from 4000 at 6e-3 of +0.0044 +- 0.0042 (higher for 7 of the 8
# seeds, by 0.001-0.013; lower by 0.024 for one). The demo takes 3000 steps at 8e-3: three
# quarters of the training, which is what it needs to finish within 30 s on a loaded 2-core
# machine (README, Measured), for a KL about 0.005 nats higher.
DEMO_STEPS = 3000
DEMO_LR = 8e-3


# A continuous flow's density solves an ODE with D + 1 passes of its field per evaluation (32
# evaluations per point): a million points took 104 s for ffjord(2), so it gets 100,000 (its
# KL's standard error, printed, is about 3x a million points').
N_TEST_CONTINUOUS = 100_000
CONTINUOUS = ("ffjord", "flow_matching")


def n_test(model=None, n=None):
    """Test points of a toy run: ``n`` if given, else N_TEST (N_TEST_CONTINUOUS for a
    continuous flow); N_TEST_FAST with NFLOWS_EDU_FAST=1."""
    if os.environ.get("NFLOWS_EDU_FAST") == "1":
        return N_TEST_FAST
    if n is not None:
        return n
    return N_TEST_CONTINUOUS if model in CONTINUOUS else N_TEST


# Adam's peak learning rate and warm-up: on checkerboard, 5 seeds of realnvp(2), 5000 steps,
# batch 512, gave KL 0.096 on average (max 0.115) with these, 0.143 (max 0.177) with lr 1e-3.
LR = 3e-3
WARMUP = 200
CLIP = 100.0
HIDDEN = (64, 64)  # hidden widths of every network on the 2-D toys
BETA2 = 0.999      # Adam's decay rate of the running square of the gradient
# A model's own defaults on the 2-D toys, where they differ from HIDDEN and BETA2. With 64x64
# MADEs and beta2 0.999, maf(2) (5000 steps, batch 512) missed KL 0.10 on checkerboard for most
# seeds; three hidden layers and a shorter memory for Adam's squared gradient lowered its mean
# KL over seeds on checkerboard and on 8gaussians (benchmarks/maf_toys.py prints both
# settings seed by seed; the README quotes it).
# A flow matching field of tanh units blurs the checkerboard's edges. Scratch screening runs
# on checkerboard (one seed, batch 512, KL on 30,000-50,000 points): 64x64 tanh 0.42 after
# 5000 steps and 0.22 after 40,000; 128x128x128 tanh 0.231 after 10,000; 128x128x128 after
# 15,000 steps: SiLU 0.178, sine of frequency 3 0.112, sine of frequency 2 pi (nn.Sine) 0.097.
# FFJORD likewise: after 1000 steps on checkerboard (seed 0, KL on 30,000 points) a 64x64
# tanh field gave 0.42-0.45 (benchmarks/continuous_toys.py, seeds 0 and 1), a sine one 0.0755.
# Flow matching trains in float32 with the marginal target (flow_matching.MarginalTarget):
# NumPy's float64 sine took 16 times float32's here (549 against 35 us for 512 x 128), so a
# float64 step took 11.2 ms and a float32 one 2.0 ms, for the same KL after 15,000 steps
# (0.0941 +- 0.0019 both, seed 0); the marginal target's average over the data took the KL
# after 30,000 steps to 0.035 where minibatch OT reached 0.047 after 60,000 (scratch runs,
# seed 0, KL on 30,000 points). benchmarks/continuous_toys.py, 100,000 steps, seeds 0 and 1:
# checkerboard 0.0270 and 0.0269, 8gaussians 0.0021 and 0.0026 (README, Measured).
TOY_DEFAULTS = {"maf": dict(hidden=(64, 64, 64), beta2=0.99),
                "flow_matching": dict(hidden=(128, 128, 128), activation="sine",
                                      dtype="float32", target="marginal"),
                "ffjord": dict(activation="sine")}


DIGITS_COPIES = 16      # dequantised copies of the training images (fresh noise in each)
DIGITS_TEST_COPIES = 8  # dequantisations of the test images averaged for test_nll
DIGITS_EVAL_EVERY = 50  # it overfits within a few hundred steps: look often
# The MADEs and the learning rate on digits, from runs of 3000 steps at batch 128 (test
# bits/dim, ReLU unless said): hidden (256, 256) 2.284 with lr 3e-3, 2.290 with lr 1e-3;
# hidden (512, 512) 2.258 with lr 1e-3, 2.262 with lr 5e-4, 2.284 with lr 2e-3, and with tanh
# 2.232 with lr 1e-3.
DIGITS_HIDDEN = (512, 512)
DIGITS_ACTIVATION = "tanh"
DIGITS_LR = 1e-3
DIGITS_MODELS = ("maf", "nsf", "glow", "realnvp_image")  # take pixel_levels, train by max. likelihood
DIGITS_TEMPERATURES = (0.5, 0.75, 1.0)  # samples.png: one grid per sampling temperature


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit code 2."""


@dataclass
class Run:
    r"""One training run: ``model`` (a name of ``models.MODELS``) on ``data`` (a 2-D toy of
    ``datasets.TOY_NAMES``, or ``"digits"``) for ``steps`` Adam steps of ``batch_size``
    examples at peak learning rate ``lr`` (``warmup`` steps of linear warm-up, then cosine
    decay; gradients clipped to norm ``clip``), written into the directory ``out``.

    ``hidden`` and ``beta2`` (Adam's) are for the toys: None takes the model's
    ``TOY_DEFAULTS``, else ``HIDDEN`` and ``BETA2``; so does ``dtype`` (else float64, and
    float64 on the digits). ``threads``: BLAS threads, ``"auto"`` or a number. ``n_layers``
    is the model's number of layers (glow's depth on the digits); ``coupling`` is glow's
    coupling on the digits (None: affine). ``ema`` is the decay of Polyak averaging
    (``train.fit``'s ``ema``; None: none), not for flow matching.
    ``n_test`` is the number of fresh points the toys' KL is estimated on (None: ``n_test``'s
    default for the model).
    """

    model: str
    data: str
    steps: int
    batch_size: int
    lr: float
    out: str
    seed: int = 0
    n_layers: int = None
    hidden: tuple = None
    dtype: str = None
    overwrite: bool = False
    progress: bool = True
    warmup: int = WARMUP
    clip: float = CLIP
    threads: object = "auto"
    beta2: float = None
    coupling: str = None
    ema: float = None
    n_test: int = None


def run(config):
    """Train, evaluate and save as ``config`` (a ``Run``) says; returns the metrics."""
    return _digits(config) if config.data == "digits" else _toy(config)


def _refuse_overwrite(model_path, overwrite):
    if os.path.exists(model_path) and not overwrite:
        raise UsageError(f"{model_path} exists; pass --overwrite to replace it")


def _prepare_out(out, overwrite):
    """Refuse an --out that cannot take the results, before any training time is spent."""
    model_path = os.path.join(out, "model.npz")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file; expected a directory to write into")
    _refuse_overwrite(model_path, overwrite)
    os.makedirs(out, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {out}: the directory is not writable")
    return model_path


def _write_metrics(out, written, metrics):
    """Write ``metrics.json`` into ``out``, list every file written, return ``metrics``."""
    written.append(os.path.join(out, "metrics.json"))
    with open(written[-1], "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print("wrote:")
    for path in written:
        print(f"  {path}")
    parts = [f"training {metrics['train_seconds']:.1f} s"]
    parts += [f"{name} {metrics[key]:.1f} s" for name, key in
              (("evaluation", "eval_seconds"), ("pictures and saving", "pictures_seconds"))
              if key in metrics]
    print(f"wall time: {metrics['seconds']:.1f} s ({', '.join(parts)})")
    return metrics


# ------------------------------------------------------------------ the 2-D toys
def run_training(model, data, steps, batch_size, lr, out, seed=0, n_layers=None,
                 hidden=None, dtype=None, overwrite=False, progress=True,
                 warmup=WARMUP, clip=CLIP, threads="auto", beta2=None):
    r"""Train ``model`` on ``data``, save it and its pictures into ``out``; returns metrics.

    ``hidden`` and ``beta2`` (Adam's) left at None take the model's ``TOY_DEFAULTS``, else
    ``HIDDEN`` and ``BETA2``; an ``activation`` in ``TOY_DEFAULTS`` is passed to the model.

    The output directory is checked first, so a refused run wastes no training time. Ctrl-C
    stops the training; the model so far is evaluated and saved, and the exit code is 130.
    """
    return _toy(Run(model, data, steps, batch_size, lr, out, seed=seed, n_layers=n_layers,
                    hidden=hidden, dtype=dtype, overwrite=overwrite, progress=progress,
                    warmup=warmup, clip=clip, threads=threads, beta2=beta2))


def _toy(config):
    """``run_training`` on a ``Run``."""
    start = time.perf_counter()
    model, data = config.model, config.data
    model_path = _prepare_out(config.out, config.overwrite)
    own = TOY_DEFAULTS.get(model, {})
    hidden = tuple(own.get("hidden", HIDDEN) if config.hidden is None else config.hidden)
    beta2 = own.get("beta2", BETA2) if config.beta2 is None else config.beta2
    rng = np.random.default_rng(config.seed)
    x = datasets.toy(data, N_TRAIN, rng)
    dtype = own.get("dtype", "float64") if config.dtype is None else config.dtype
    kwargs = dict(hidden=hidden, rng=rng, dtype=np.dtype(dtype))
    if "activation" in own:
        kwargs["activation"] = own["activation"]
    if "hidden" not in inspect.signature(models.MODELS[model]).parameters:
        del kwargs["hidden"]  # planar and radial layers have no network
    if config.n_layers is not None:
        if "n_layers" not in inspect.signature(models.MODELS[model]).parameters:
            raise UsageError(f"--n-layers: {model} has a single block, no such option")
        kwargs["n_layers"] = config.n_layers
    flow = models.MODELS[model](2, **kwargs)

    n_threads = choose_threads(config.threads, flow, config.batch_size)
    print(f"training {model} ({flow.num_params()} parameters, {dtype}) on {data} for "
          f"{config.steps} steps, batch {config.batch_size}, lr {config.lr} (warm-up "
          f"{config.warmup} steps, then cosine decay), Adam beta2 {beta2:g}, BLAS threads: "
          f"{n_threads or 'library default'}")
    with blas_threads(n_threads):  # the evaluation's large batches too
        resolved = replace(config, hidden=hidden, beta2=beta2, threads=n_threads, dtype=dtype)
        return _train_and_report(flow, x, rng, resolved, model_path, start)


def _train_and_report(flow, x, rng, config, model_path, start):
    """Train ``flow`` on ``x`` as ``config`` says (its ``beta2`` and ``threads`` resolved),
    evaluate it on fresh samples, save the model, its pictures and the metrics."""
    model, data, steps = config.model, config.data, config.steps
    # flow_matching regresses its field on straight paths; every other model: maximum likelihood
    fit = train.fit_flow_matching if model == "flow_matching" else train.fit
    extra = {} if config.ema is None else dict(ema=config.ema)
    if "target" in TOY_DEFAULTS.get(model, {}):
        extra["target"] = TOY_DEFAULTS[model]["target"]  # flow matching's regression target
    history = fit(flow, x, steps=steps, batch_size=config.batch_size, lr=config.lr, rng=rng,
                  schedule="cosine", warmup=min(config.warmup, steps), clip=config.clip,
                  threads=config.threads, progress=config.progress, betas=(0.9, config.beta2),
                  **extra)
    train_seconds = time.perf_counter() - start
    if history["interrupted"]:
        print(f"interrupted by Ctrl-C after {len(history['loss'])} of {steps} steps: "
              "evaluating and saving the model so far")
    flow.eval()  # the density itself: exact Lipschitz bounds and log-dets, BatchNorm's averages
    test = datasets.toy(data, n_test(model, config.n_test), rng)
    log_q = train.log_prob(flow, test)
    test_nll = float(-log_q.mean())
    print(f"test NLL: {test_nll:.4f} nats per point ({len(test):,} fresh samples)")
    kl = kl_se = entropy = None
    if data in datasets.CLOSED_FORM_NAMES:
        entropy = datasets.toy_entropy(data)
        kl, kl_se = datasets.kl_estimate(data, test, log_q)
        print(f"KL(p || q) = mean of log p(x) - log q(x) = {kl:.4f} +- {kl_se:.4f} nats "
              f"(standard error; entropy H(p) = {entropy:.4f})")

    eval_done = time.perf_counter()
    written = [io.save(flow, model_path, overwrite=True)]
    written += viz.save_pictures(flow, x, config.out, rng=rng, data_name=data).values()
    ax = viz.plot_loss(history, entropy=None if model == "flow_matching" else entropy)
    written.append(os.path.join(config.out, "loss.png"))
    ax.figure.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(ax.figure)

    seconds = time.perf_counter() - start
    metrics = dict(model=model, data=data, steps=len(history["loss"]),
                   batch_size=config.batch_size, lr=config.lr, beta2=config.beta2,
                   warmup=config.warmup, seed=config.seed, dtype=config.dtype,
                   test_nll=test_nll, kl=kl, kl_se=kl_se, n_test=len(test),
                   interrupted=history["interrupted"],
                   train_seconds=round(train_seconds, 3),
                   eval_seconds=round(eval_done - start - train_seconds, 3),
                   pictures_seconds=round(time.perf_counter() - eval_done, 3),
                   seconds=round(seconds, 3))
    return _write_metrics(config.out, written, metrics)


# ------------------------------------------------------------------ the 8x8 digits
def run_digits(model, steps, batch_size, lr, out, seed=0, n_layers=None, dtype="float64",
               overwrite=False, progress=True, warmup=WARMUP, clip=CLIP, coupling=None,
               ema=None):
    r"""Train ``model`` on the 8x8 digits; save it, ``metrics.json`` and a grid of samples.

    The flow models dequantised pixels v = x + u in [0, 17)^64 (``models.maf(...,
    pixel_levels=17)``). It trains on DIGITS_COPIES dequantised copies of the 1,257 training
    images, is evaluated every DIGITS_EVAL_EVERY steps on the 270 validation images, and keeps
    the parameters with the best validation NLL (``train.fit(..., keep_best=True)``: the
    data set is small and overfits). ``test_nll`` (nats per image) and ``test_bpd``
    (``datasets.bits_per_dim``) average DIGITS_TEST_COPIES dequantisations of the 270 test
    images. The MADEs (``maf``) and the coupling nets (``nsf``) have DIGITS_HIDDEN hidden
    units and DIGITS_ACTIVATION (``--hidden`` is for the 2-D data). ``coupling`` is glow's
    (``models.glow(..., coupling=...)``; None keeps its default, affine). With ``ema``, the
    running average of the parameters is what is validated, kept and tested
    (``train.ParameterAverage``).
    """
    return _digits(Run(model, "digits", steps, batch_size, lr, out, seed=seed,
                       n_layers=n_layers, dtype=dtype, overwrite=overwrite, progress=progress,
                       warmup=warmup, clip=clip, coupling=coupling, ema=ema))


def _digits(config):
    """``run_digits`` on a ``Run``."""
    model, steps, batch_size, lr, out = (config.model, config.steps, config.batch_size,
                                         config.lr, config.out)
    seed, n_layers, overwrite = config.seed, config.n_layers, config.overwrite
    dtype = "float64" if config.dtype is None else config.dtype
    progress, warmup, clip, coupling = config.progress, config.warmup, config.clip, config.coupling
    if model not in DIGITS_MODELS:
        raise UsageError(f"--data digits trains by maximum likelihood a model that models "
                         f"pixels: expected --model {' or '.join(DIGITS_MODELS)}, got {model!r}")
    from .bijectors import dequantize

    start = time.perf_counter()
    model_path = os.path.join(out, "model.npz")
    _refuse_overwrite(model_path, overwrite)
    rng = np.random.default_rng(seed)
    levels, dim = datasets.DIGITS_LEVELS, 64
    train_x = datasets.digits("train")
    x = dequantize(np.tile(train_x, (DIGITS_COPIES, 1)), rng, levels)
    x_val = dequantize(datasets.digits("validation"), rng, levels)
    x_test = dequantize(np.tile(datasets.digits("test"), (DIGITS_TEST_COPIES, 1)), rng, levels)
    if model in models.IMAGE_MODELS:  # the models' own defaults; --n-layers is Glow's depth
        if n_layers is not None and model != "glow":
            raise UsageError(f"--n-layers sets glow's depth; {model} has no such option")
        kwargs = dict(shape=(1, 8, 8), pixel_levels=levels, rng=rng, dtype=np.dtype(dtype))
        if n_layers is not None:
            kwargs["depth"] = n_layers
        if coupling is not None:
            kwargs["coupling"] = coupling
        flow = models.MODELS[model](**kwargs)
    else:
        kwargs = dict(hidden=DIGITS_HIDDEN, activation=DIGITS_ACTIVATION, pixel_levels=levels,
                      rng=rng, dtype=np.dtype(dtype))
        if n_layers is not None:
            kwargs["n_layers"] = n_layers
        flow = models.MODELS[model](dim, **kwargs)
    print(f"training {model} ({flow.num_params()} parameters) on digits ({len(train_x)} "
          f"images x {DIGITS_COPIES} dequantisations) for {steps} steps, batch {batch_size}, "
          f"lr {lr} (warm-up {warmup} steps, then cosine decay), keeping the parameters with "
          f"the best validation NLL" + ("" if config.ema is None else
                                        f" (their running average, decay {config.ema:g})"))
    history = train.fit(flow, x, steps=steps, batch_size=batch_size, lr=lr, rng=rng,
                        val_data=x_val, keep_best=True, eval_every=DIGITS_EVAL_EVERY,
                        schedule="cosine", warmup=min(warmup, steps), clip=clip,
                        progress=progress, ema=config.ema)
    train_seconds = time.perf_counter() - start
    flow.eval()
    # x_test is DIGITS_TEST_COPIES copies of the test images, one after the other: average
    # each image's NLL over its copies, then the standard error is over the images
    per_image = -train.log_prob(flow, x_test).reshape(DIGITS_TEST_COPIES, -1).mean(axis=0)
    test_nll = float(per_image.mean())
    test_nll_se = float(per_image.std(ddof=1) / np.sqrt(len(per_image)))
    test_bpd = datasets.bits_per_dim(test_nll, dim)
    test_bpd_se = datasets.bits_per_dim(test_nll_se, dim)
    train_bpd = datasets.bits_per_dim(train.nll(flow, x[:len(train_x)]), dim)
    print(f"best validation NLL at step {history['best_step']}; test NLL {test_nll:.2f} ± "
          f"{test_nll_se:.2f} nats per image = {test_bpd:.4f} ± {test_bpd_se:.4f} bits/dim "
          f"(train {train_bpd:.4f}; uniform {np.log2(levels):.4f})")

    written = [io.save(flow, model_path, overwrite=overwrite)]
    written.append(os.path.join(out, "samples.png"))
    fig = viz.digits_temperatures({t: flow.sample(64, rng, temperature=t)
                                   for t in DIGITS_TEMPERATURES}, levels)
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    ax = viz.plot_loss(history)
    written.append(os.path.join(out, "loss.png"))
    ax.figure.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(ax.figure)

    seconds = time.perf_counter() - start
    metrics = dict(model=model, data="digits", steps=steps, batch_size=batch_size, lr=lr,
                   warmup=warmup, seed=seed, dtype=dtype, ema=config.ema,
                   best_step=history["best_step"],
                   best_val_nll=history["best_val_nll"], test_nll=test_nll, test_nll_se=test_nll_se,
                   test_bpd=test_bpd, test_bpd_se=test_bpd_se,
                   train_bpd=train_bpd, temperatures=list(DIGITS_TEMPERATURES),
                   train_seconds=round(train_seconds, 3),
                   seconds=round(seconds, 3))
    return _write_metrics(out, written, metrics)
