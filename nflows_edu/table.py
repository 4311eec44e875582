r"""The survey's table, measured: what each flow family costs in each direction.

A flow is used four ways, and a family is fast at some and slow at others:

* inference  ``z = f(x)``: the normalizing direction, ``flow.bijector.forward``;
* sampling   ``x = f^{-1}(z)``, ``z ~ p_Z``: ``flow.sample``;
* density    ``log p(x)`` of a point the model did not generate: ``flow.log_prob``;
* training   one optimizer step, in the direction the family trains: maximum likelihood
  (``forward`` and ``backward``) or reverse KL (``inverse`` and ``inverse_backward``).

"Network passes" counts how many times each layer's network must run, one after the other:
``1`` when every feature is computed at once (a coupling layer, MAF's density, IAF's sampling),
``D`` when feature i needs features 1..i-1 first (MAF's sampling, IAF's density: a naive
implementation reruns the MADE D times; ``nflows_edu.kernels`` does the D dependent steps at the
cost of about one pass). Planar and radial layers have no network: ``1`` means one projection
of the batch, ``1 + Newton`` a projection plus a scalar root-finding per example. Continuous
flows (FFJORD, flow matching) have one ``CNF`` block and count field evaluations instead: 8
RK4 steps are 32 evaluations of the field in every direction, each with one Jacobian-vector
product for Hutchinson's trace (the table's flows are in training mode; ``eval()`` takes the
exact trace, D of them); flow matching trains by regressing the field at one time per point,
one evaluation and no ODE.

``FAMILIES`` is data: a new family joins the table by appending a ``Family``.
"""
import time
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from . import flow_matching, models, train
from .optim import Adam

OPERATIONS = ("inference", "sampling", "density", "training")


@dataclass(frozen=True)
class Family:
    r"""One row group of the table.

    name : str
    build : callable ``(dim, rng, hidden, dtype) -> Flow``
    passes : dict operation -> str, the network passes per layer for each of ``OPERATIONS``
    trains : "forward" (maximum likelihood), "inverse" (reverse KL) or "flow matching" (the
        regression of ``train.fit_flow_matching``, for a flow of one ``CNF``)
    repeats : int or None, at most this many timed calls (for families whose every call takes
        seconds; None: the table's ``repeats``)
    """

    name: str
    build: object
    passes: dict = field(default_factory=dict)
    trains: str = "forward"
    repeats: object = None


N_LAYERS = 5
PARALLEL_ML = dict(inference="1", sampling="1", density="1", training="1")

FAMILIES = [
    Family("NICE", lambda d, rng, hidden, dtype: models.nice(
        d, N_LAYERS, hidden, rng=rng, dtype=dtype), PARALLEL_ML),
    Family("RealNVP", lambda d, rng, hidden, dtype: models.realnvp(
        d, N_LAYERS, hidden, rng=rng, dtype=dtype), PARALLEL_ML),
    Family("NSF", lambda d, rng, hidden, dtype: models.nsf(
        d, N_LAYERS, hidden, rng=rng, dtype=dtype), PARALLEL_ML),
    Family("MAF", lambda d, rng, hidden, dtype: models.maf(
        d, N_LAYERS, hidden, rng=rng, dtype=dtype),
        dict(inference="1", sampling="D", density="1", training="1")),
    Family("NSF-AR", lambda d, rng, hidden, dtype: models.nsf_ar(
        d, N_LAYERS, hidden, rng=rng, dtype=dtype),
        dict(inference="1", sampling="D", density="1", training="1")),
    Family("IAF", lambda d, rng, hidden, dtype: models.iaf(
        d, N_LAYERS, hidden, rng=rng, dtype=dtype),
        dict(inference="D", sampling="1", density="D", training="1"), trains="inverse"),
    Family("Planar", lambda d, rng, hidden, dtype: models.planar(
        d, N_LAYERS, rng=rng, dtype=dtype),
        dict(inference="1 + Newton", sampling="1", density="1 + Newton", training="1"),
        trains="inverse"),
    Family("Radial", lambda d, rng, hidden, dtype: models.radial(
        d, N_LAYERS, rng=rng, dtype=dtype),
        dict(inference="1 (closed form)", sampling="1", density="1 (closed form)",
             training="1"), trains="inverse"),
    # Residual and implicit flows: "k it" is the measured mean number of fixed-point or
    # root-finding iterations per block (each one a network pass), filled in by ``run``.
    Family("i-ResNet", lambda d, rng, hidden, dtype: models.iresnet(
        d, N_LAYERS, hidden, logdet="series", rng=rng, dtype=dtype),
        dict(inference="1 + series", sampling="fixed point", density="1 + series",
             training="1 + series")),
    Family("ResFlow", lambda d, rng, hidden, dtype: models.resflow(
        d, N_LAYERS, hidden, rng=rng, dtype=dtype),
        dict(inference="1 + roulette", sampling="fixed point", density="1 + roulette",
             training="1 + roulette")),
    Family("ImpFlow", lambda d, rng, hidden, dtype: models.impflow(
        d, N_LAYERS, hidden, logdet="roulette", rng=rng, dtype=dtype),
        dict(inference="root finding", sampling="root finding", density="root finding",
             training="root finding")),
    # Continuous flows: one CNF block (its field has the table's hidden widths), 8 RK4 steps.
    Family("FFJORD", lambda d, rng, hidden, dtype: models.ffjord(
        d, hidden, n_steps=8, trace="hutchinson", rng=rng, dtype=dtype),
        dict(inference="32 evals + 32 JVPs", sampling="32 evals + 32 JVPs",
             density="32 evals + 32 JVPs", training="32 + 32, then their VJPs"), repeats=1),
    Family("FlowMatch", lambda d, rng, hidden, dtype: models.flow_matching(
        d, hidden, n_steps=8, trace="hutchinson", rng=rng, dtype=dtype),
        dict(inference="32 evals + 32 JVPs", sampling="32 evals + 32 JVPs",
             density="32 evals + 32 JVPs", training="1 eval (no ODE)"),
        trains="flow matching", repeats=1),
]


def _iterations(cache):
    """Every ``iterations`` count found in a (nested) cache: the solver's iterations."""
    if isinstance(cache, dict):
        found = [cache["iterations"]] if isinstance(cache.get("iterations"), int) else []
        return found + [i for key, v in cache.items() if key != "iterations"
                        for i in _iterations(v)]
    if isinstance(cache, (list, tuple)):
        return [i for v in cache for i in _iterations(v)]
    return []


def _best_time(fn, repeats):
    """The fastest of ``repeats`` timed calls, after one untimed call (compilation, caches).

    Timed in CPU seconds of this process (``time.process_time``), not wall-clock seconds: with
    one BLAS thread and serial kernels the two agree on an idle machine, but on a shared one
    the wall clock also counts the time other processes held the core (measured here: a 4x
    spread in wall-clock times with four other jobs on two cores).
    """
    fn()
    best = np.inf
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _move_off_identity(flow, rng):
    """Untrained couplings and MADEs start at the identity; give every output layer small
    random weights so the timed maps do real work (the cost is the same either way)."""
    for _, p, _ in flow.parameters():
        if not p.any():
            p += 0.01 * rng.standard_normal(p.shape).astype(p.dtype)


def time_family(family, dim, n, hidden, repeats, dtype=np.float64, seed=0):
    r"""Seconds for each of ``OPERATIONS`` on one ``family`` at ``dim`` features, ``n`` points."""
    rng = np.random.default_rng(seed)
    flow = family.build(dim, rng, hidden, dtype)
    _move_off_identity(flow, rng)
    x = rng.standard_normal((n, dim)).astype(dtype)  # points the model did not generate
    opt = Adam(list(flow.parameters()), lr=1e-4)

    def log_target(v):
        return -0.5 * np.einsum("nd,nd->n", v, v)

    def train_step():
        if family.trains == "forward":
            flow.loss_and_grad(x)
        elif family.trains == "flow matching":   # x as data, noise paired at random times
            field.zero_grad()
            flow_matching.cfm_loss_and_grad(field, x, z, rng.uniform(size=n))
        else:
            train.reverse_kl_loss_and_grad(flow, z, log_target, lambda v: -v)
        opt.step()

    z = flow.base.sample(n, rng)
    field = flow_matching.field_of(flow, "table") if family.trains == "flow matching" else None
    ops = dict(inference=lambda: flow.bijector.forward(x),
               sampling=lambda: flow.sample(n, rng),
               density=lambda: flow.log_prob(x),
               training=train_step)
    repeats = repeats if family.repeats is None else min(repeats, family.repeats)
    times = {op: _best_time(ops[op], repeats) for op in OPERATIONS}
    # mean solver iterations per block in each direction (none for the other families)
    iterations = {"inference": _iterations(flow.bijector.forward(x)[2]),
                  "sampling": _iterations(flow.bijector.inverse(z)[2])}
    iterations["density"] = iterations["inference"]
    times["iterations"] = {op: float(np.mean(v)) for op, v in iterations.items() if v}
    return times


def run(dims=(16, 64), n=1024, hidden=(256, 256), repeats=3, families=None, dtype=np.float64,
        seed=0):
    r"""Measure every family at every dim, on one BLAS thread. Returns a list of rows
    ``dict(family, operation, passes, trains, times={dim: seconds})``."""
    families = FAMILIES if families is None else families
    rows = []
    with threadpool_limits(1):
        for family in families:
            times = {d: time_family(family, d, n, hidden, repeats, dtype, seed) for d in dims}
            for op in OPERATIONS:
                passes = family.passes[op]
                counts = [times[d]["iterations"][op] for d in dims
                          if op in times[d]["iterations"]]
                if counts:
                    passes += " (" + "/".join(f"{c:.0f}" for c in counts) + " it)"
                rows.append(dict(family=family.name, operation=op, passes=passes,
                                 trains=family.trains, times={d: times[d][op] for d in dims}))
    return rows


def format_table(rows, dims, n, hidden, repeats, dtype=np.float64):
    r"""The table as text: one line per family and operation, times in milliseconds and the
    growth from the first to the last ``dims``."""
    lo, hi = dims[0], dims[-1]
    lines = [f"N = {n} points, {np.dtype(dtype).name}, {N_LAYERS} layers per flow, hidden "
             f"{'x'.join(map(str, hidden))} (every network), 1 BLAS thread, best of "
             f"{repeats}; CPU times in ms",
             "passes: network passes per layer (1 = all features at once; D = one per feature, "
             "in order;",
             "        (a/b it) = mean solver iterations per block, each a network pass, at each D;"
             " series/roulette: the stochastic log-det's extra passes)",
             "training: one Adam step, maximum likelihood (ML), reverse KL (RKL) or flow "
             "matching (FM)",
             "FFJORD, FlowMatch: one CNF, 8 RK4 steps (32 field evaluations per direction), "
             "Hutchinson's trace (1 JVP each); timed once, after a warm-up call",
             ""]
    header = (f"{'family':9s} {'operation':17s} {'passes':26s}"
              + "".join(f"{'D=' + str(d):>10s}" for d in dims) + f"{f'{hi}/{lo}':>8s}")
    lines += [header, "-" * len(header)]
    previous = None
    for row in rows:
        name = row["family"] if row["family"] != previous else ""
        previous = row["family"]
        op = row["operation"]
        if op == "training":
            op += {"forward": " (ML)", "inverse": " (RKL)"}.get(row["trains"], " (FM)")
        ratio = row["times"][hi] / row["times"][lo]
        lines.append(f"{name:9s} {op:17s} {row['passes']:26s}"
                     + "".join(f"{1e3 * row['times'][d]:10.3f}" for d in dims)
                     + f"{ratio:8.2f}")
    return "\n".join(lines)


FAST = dict(dims=(4, 8), n=64, hidden=(8, 8), repeats=1)
FULL = dict(dims=(16, 64), n=1024, hidden=(256, 256), repeats=5)


# ------------------------------------------------------------------ time against D, for plots
def curves(rows):
    r"""The rows of ``run`` as curves to plot: ``{family: {operation: (dims, seconds)}}``.

    ``dims`` (int) and ``seconds`` (float) are arrays in increasing D, one point per size the
    family was timed at (families timed at different sizes can share a plot).
    """
    out = {}
    for row in rows:
        dims = np.array(sorted(row["times"]))
        seconds = np.array([row["times"][d] for d in dims], dtype=np.float64)
        out.setdefault(row["family"], {})[row["operation"]] = (dims, seconds)
    return out


def loglog_slope(dims, seconds):
    r"""The exponent p of the least-squares fit  seconds = a * D^p  (log seconds against log D):
    the slope of the curve on a log-log plot. About 0 for a cost that does not grow with D
    (a network whose hidden layers dominate), 1 for linear, 2 for D passes of a network whose
    own cost grows like D."""
    dims, seconds = np.asarray(dims, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    if dims.shape != seconds.shape or dims.size < 2 or not (dims > 0).all() \
            or not (seconds > 0).all():
        raise ValueError(f"loglog_slope: expected two or more positive sizes and times of the "
                         f"same shape, got dims {dims.tolist()} and seconds {seconds.tolist()}")
    return float(np.polyfit(np.log(dims), np.log(seconds), 1)[0])


def best_time(fn, repeats=3):
    r"""CPU seconds of the fastest of ``repeats`` calls of ``fn()`` after one untimed call: the
    timing every entry of the table uses, for a lecture's own measurements."""
    return _best_time(fn, repeats)
