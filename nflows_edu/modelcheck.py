r"""Checks of a whole flow: is its ``log_prob`` a normalised, deterministic density, and does it
describe the flow's own samples?

The layer checks (``gradcheck``) prove that each layer is a smooth map with the right
inverse, log-determinant and gradients *at the points they try*. They do not prove that the
flow is a bijection of the whole space. A residual block ``z = x + g(x)`` whose ``g`` is not a
contraction (its Lipschitz bound lagging its weights) passes every one of them and still
folds the plane over itself: two points x, x' reach the same z, so the change of variables

    p(x) = p_Z(f(x)) |det df/dx(x)|

counts the density of z once for each of them, and the "density" integrates to more than 1.
A stochastic log-det (Residual Flows' roulette) is unbiased for log p, so exp of it is
biased upwards (Jensen), and integrates to more than 1 too. What catches both is an
integral:

    mass  = sum over a grid of cells of  exp(log p(x_cell)) * (cell area)
    share = the fraction of the flow's own samples x = f^{-1}(z), z ~ p_Z, in the same box

For a true density the two agree (up to the grid's quadrature error and the samples'
standard error), and both are at most 1. ``check_flow`` measures them for 2-D flows, with
the deterministic-evaluation, round-trip and whole-flow log-det checks for any dimension.
"""
from dataclasses import dataclass

import numpy as np

from .gradcheck import numerical_jacobian


@dataclass
class FlowCheck:
    """What ``check_flow`` measured (None where it does not apply)."""

    mass: float          # integral of exp(log_prob) over the box (2-D flows), midpoint rule
    share: float         # fraction of n_samples samples inside the box (2-D flows)
    share_se: float      # its standard error, sqrt(share (1 - share) / n_samples)
    repeat_diff: float   # max |log_prob(x) - log_prob(x)| over two calls on the same points
    round_trip: float    # max |f(f^{-1}(z)) - z| over the points checked
    logdet_cancel: float  # max |logdet_inverse(z) + logdet_forward(x)|
    logdet_err: float    # max |logdet_forward - log|det J|| with J by central differences

    def __str__(self):
        rows = [("mass on the grid", self.mass), ("share of samples inside", self.share),
                ("log_prob twice, max difference", self.repeat_diff),
                ("round trip f(f^-1(z)) - z", self.round_trip),
                ("logdet forward + inverse", self.logdet_cancel),
                ("logdet vs slogdet(numerical J)", self.logdet_err)]
        return "\n".join(f"{name:34s} {'-' if v is None else f'{v:.6g}'}" for name, v in rows)


def batched_log_prob(flow, points, batch_size=65536):
    """``flow.log_prob(points)`` in batches of at most ``batch_size`` rows."""
    return np.concatenate([flow.log_prob(points[i:i + batch_size])
                           for i in range(0, len(points), batch_size)])


def grid_mass(flow, box=6.0, n_grid=301, batch_size=65536):
    r"""The integral of ``exp(flow.log_prob)`` over the square ``[-box, box]^2``: the midpoint
    rule on ``n_grid x n_grid`` cells of side h = 2 box / n_grid,  sum exp(log p(x_c)) h^2.

    Returns ``(mass, points, log_p)``: the cell centres x_c (n_grid^2, 2) and log p(x_c)."""
    h = 2 * box / n_grid
    centres = -box + h * (np.arange(n_grid) + 0.5)
    a, b = np.meshgrid(centres, centres)
    points = np.stack([a.ravel(), b.ravel()], axis=1)
    log_p = batched_log_prob(flow, points, batch_size)
    with np.errstate(over="ignore"):  # a folded flow's "density" may overflow: mass inf
        return float(np.exp(log_p.astype(np.float64)).sum() * h * h), points, log_p


def check_flow(flow, rng, box=6.0, n_grid=301, n_samples=20000, n_points=16, eps=1e-6):
    r"""Check ``flow`` as a whole, in evaluation mode (restored afterwards).

    * 2-D flows: ``mass`` (``grid_mass``) and ``share``, the fraction of ``n_samples`` of
      the flow's own samples inside ``[-box, box]^2``; for a density the two agree;
    * ``repeat_diff``: ``log_prob`` twice on the same points (the grid, or the samples);
    * on ``n_points`` of its samples x = f^{-1}(z): ``round_trip`` max |f(x) - z|,
      ``logdet_cancel`` max |logdet_inverse + logdet_forward|, and ``logdet_err``,
      max |logdet_forward(x) - log|det J(x)||, J the central-difference Jacobian of the
      whole forward map with step ``eps`` (float64 flows: in float32 it measures round-off).

    Returns a ``FlowCheck``.
    """
    training = flow.training
    flow.eval()
    try:
        x = flow.sample(n_samples, rng)
        if flow.dim == 2:
            mass, points, first = grid_mass(flow, box, n_grid)
            inside = np.all(np.abs(x) <= box, axis=1).mean()
            share, share_se = float(inside), float(np.sqrt(inside * (1 - inside) / n_samples))
        else:
            mass = share = share_se = None
            points = x[:4096]
            first = batched_log_prob(flow, points)
        # the same points in the same batches: any difference is the density's, not round-off
        repeat_diff = float(np.abs(batched_log_prob(flow, points) - first).max())

        z = flow.base.sample(n_points, rng).astype(flow.dtype, copy=False)
        x_pts, logdet_inv, _ = flow.bijector.inverse(z)
        z_back, logdet_fwd, _ = flow.bijector.forward(x_pts)
        round_trip = float(np.abs(z_back - z).max())
        logdet_cancel = float(np.abs(logdet_inv + logdet_fwd).max())
        J = numerical_jacobian(lambda v: flow.bijector.forward(v.astype(flow.dtype))[0],
                               x_pts, eps)
        logdet_err = float(np.abs(logdet_fwd - np.linalg.slogdet(J)[1]).max())
    finally:
        flow.train(training)
    return FlowCheck(mass, share, share_se, repeat_diff, round_trip, logdet_cancel, logdet_err)
