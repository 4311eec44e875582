r"""Conditional flow matching (Lipman, Chen, Ben-Hamu, Nickel, Le 2023, arXiv:2210.02747)
with the straight-line path of rectified flow (Liu, Gong, Liu 2023, arXiv:2209.03003).

A continuous flow (``bijectors.CNF``) maps data to noise by integrating dx/dt = v(x, t) from
t = 0 to 1. Maximum likelihood trains v by backpropagating through every step of the ODE
solver and needs the trace of dv/dx at every stage. Flow matching trains the same field by
plain regression, with no ODE solve at all: pick a path from each data point to a noise
point, and ask v to reproduce the path's velocity.

The direction matters: in this library t = 0 is the data and t = 1 the noise (the paper has
them the other way round). With data x_0 (N, D), noise x_1 ~ N(0, I) (N, D) and times
t ~ U(0, 1) (N,), one per example, the straight path and its velocity are

    x_t = (1 - t) x_0 + t x_1,      u = d x_t / dt = x_1 - x_0,

and the conditional flow matching loss (the paper's eq. 9 on its "optimal transport"
conditional path of section 4.1, with sigma_min = 0: rectified flow's straight line) is

    L(theta) = (1 / N) sum_n sum_{i=1}^{D} (v_theta(x_t, t)[n, i] - u[n, i])^2,

a mean over the examples and a *sum* over the D coordinates (|.|^2, the squared length of
the error). Its gradient needs only the field's VJP (``TimeField.backward``):

    dL/dv = (2 / N) (v - u)   (N, D),   dL/dtheta = VJP of v at dL/dv.

The paper's theorem 2: this loss and the (intractable) marginal flow matching loss have the
same gradient in theta; its theorem 1: the marginal field they both target carries N(0, I)
to the data distribution when integrated from t = 1 back to t = 0 (``CNF.inverse``, that is
``Flow.sample``).

Minibatch optimal transport (Tong et al. 2023, arXiv:2302.00482; Pooladian et al. 2023,
arXiv:2304.14772): the loss above pairs x_0[n] with whichever x_1[n] was drawn, so paths
cross and the learned field (which averages the velocities through each point) curves.
``ot_pairing`` re-pairs the batch by the permutation minimising sum_n |x_0[n] - x_1[n]|^2
before computing the loss: straighter paths, fewer ODE steps for the same accuracy.
"""
import numpy as np

from .core import check_array


def field_of(model, where="field_of"):
    r"""The ``TimeField`` that flow matching trains, from a ``TimeField``, a ``CNF`` or a
    ``Flow`` whose only trainable layer is one ``CNF`` on a standard normal base.

    A flow with more than one CNF block, or with other trained layers, has no single field
    whose regression target is the straight path: ``ValueError`` naming ``where``.
    """
    from .bijectors.cnf import CNF, TimeField
    from .core import Flow
    from .distributions import StandardNormal
    if isinstance(model, TimeField):
        return model
    if isinstance(model, CNF):
        return model.field
    if not isinstance(model, Flow):
        raise ValueError(f"{where}: expected a TimeField, a CNF or a Flow with one CNF, got "
                         f"{type(model).__name__}")
    cnfs = [m for m in model.modules() if isinstance(m, CNF)]
    if len(cnfs) != 1:
        raise ValueError(f"{where}: expected a Flow with exactly one CNF block (the field to "
                         f"regress), got {len(cnfs)}")
    field = cnfs[0].field
    if len(list(model.parameters())) != len(list(field.parameters())):
        raise ValueError(f"{where}: expected the CNF's field to be the flow's only trained "
                         "part; flow matching would leave the other layers untrained")
    if not isinstance(model.base, StandardNormal):
        raise ValueError(f"{where}: expected a standard normal base (the noise x_1 ~ N(0, I) "
                         f"the paths end at), got {type(model.base).__name__}")
    return field


def straight_path(x0, x1, t):
    r"""The point x_t = (1 - t) x_0 + t x_1 (N, D) and its velocity u = x_1 - x_0 (N, D) on
    the straight line from data x_0 (N, D) at t = 0 to noise x_1 (N, D) at t = 1, t (N,)."""
    t = t[:, None]
    return (1 - t) * x0 + t * x1, x1 - x0


def cfm_loss_and_grad(field, x0, x1, t, target=None):
    r"""The conditional flow matching loss and its parameter gradient.

        x_t = (1 - t) x_0 + t x_1,   u = x_1 - x_0            (``straight_path``)
        L = (1 / N) sum_n |v(x_t[n], t[n]) - u[n]|^2          (mean over N, sum over D)
        dL/dv = (2 / N) (v - u),  then ``field.backward``     (adds dL/dtheta to the grads)

    With ``target`` (a ``MarginalTarget``), u is instead its estimate of the marginal field
    at x_t, E[x_1 - x_0 | x_t]: the same minimiser, far less noise.

    Parameters
    ----------
    field : bijectors.cnf.TimeField, the field v(x, t) of D features
    x0 : ndarray (N, D), data (t = 0)
    x1 : ndarray (N, D), noise (t = 1), paired row by row with ``x0``
    t : ndarray (N,), times in [0, 1], one per example
    target : MarginalTarget or None (the conditional target x_1 - x_0)

    Returns
    -------
    loss : float. The gradients are *added* to ``field``'s grads (zero them first).
    """
    x0 = check_array(x0, "cfm_loss_and_grad (x0)", field.dim)
    x1 = check_array(x1, "cfm_loss_and_grad (x1)", field.dim)
    t = np.asarray(t)
    if x1.shape != x0.shape or t.shape != (x0.shape[0],):
        raise ValueError(f"cfm_loss_and_grad: expected x0 and x1 of the same shape (N, D) and t "
                         f"of shape (N,), got {x0.shape}, {x1.shape} and {t.shape}")
    if not (np.isfinite(t).all() and (t >= 0).all() and (t <= 1).all()):
        raise ValueError("cfm_loss_and_grad: expected times t in [0, 1]")
    n = x0.shape[0]
    xt, u = straight_path(x0, x1, t)
    if target is not None:
        u = target(x0, x1, t).astype(xt.dtype, copy=False)
    v, cache = field.forward(xt, t)
    error = v - u
    loss = np.sum(error**2) / n
    field.backward((2.0 / n) * error, cache)
    return float(loss)


def ot_pairing(x0, x1):
    r"""``x1`` re-ordered so that sum_n |x0[n] - x1[n]|^2 is as small as possible.

    The exact minimum over the N! permutations sigma of

        C(sigma) = sum_n |x0[n] - x1[sigma(n)]|^2,   cost matrix C_nm = |x0[n] - x1[m]|^2 (N, N)

    by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``, O(N^3): fine for
    minibatches of a few hundred). Returns x1[sigma] (N, D): the same noise points, paired
    anew. (Since sum |x0|^2 and sum |x1|^2 do not depend on sigma, this is also the pairing
    that maximises sum_n x0[n] . x1[sigma(n)].)
    """
    from scipy.optimize import linear_sum_assignment  # scipy only when OT pairing is used
    x0 = check_array(x0, "ot_pairing (x0)")
    x1 = check_array(x1, "ot_pairing (x1)")
    if x0.shape != x1.shape:
        raise ValueError(f"ot_pairing: expected x0 and x1 of the same shape (N, D), got "
                         f"{x0.shape} and {x1.shape}")
    cost = np.sum((x0[:, None, :] - x1[None, :, :])**2, axis=2)
    rows, sigma = linear_sum_assignment(cost)  # rows = 0, ..., N - 1 in order
    return x1[sigma]


class MarginalTarget:
    r"""The regression target with the noise averaged out: the marginal field of the training
    data at x_t, estimated from the data themselves.

    The conditional target u = x_1 - x_0 is one draw of the velocity through x_t. The loss's
    minimiser, the field that carries the data to the noise, is its average over every data
    point that could have reached x_t (the marginal field, the paper's eq. 8):

        u(x, t) = E[x_1 - x_0 | x_t = x] = (x - E[x_0 | x_t = x]) / t,

    because x_1 = (x - (1 - t) x_0) / t on the straight path. For training points y_1..y_M
    and x_1 ~ N(0, I), x_t given x_0 = y_j is N((1 - t) y_j, t^2 I), so the posterior over
    the data points is a softmax of squared distances, centred at mu = x / (1 - t) with width
    w = t / (1 - t):

        p_j = softmax_j( -|mu - y_j|^2 / (2 w^2) ),   E[x_0 | x_t = x] = sum_j p_j y_j.

    Regressing on u(x_t, t) instead of x_1 - x_0 leaves the minimiser unchanged and removes
    most of the noise: on checkerboard (100,000 training points) the conditional target's
    mean squared error from the exact marginal field was 2.0-12.2, growing with t, and this
    estimate's 0.009-0.07 (a scratch computation at t = 0.02 to 0.9; notebook 11 makes the
    same comparison on 8gaussians against the sum over all the training points). The sum
    over all M points costs N M per step; two estimates each do a small part of it, each
    where it is accurate:

    * t >= ``t_knn``: a reference batch, the batch's own x_0 and ``n_reference`` - N random
      training points (the stable target field of Xu, Tong, Jaakkola 2023,
      arXiv:2302.00670). The width w is large; many points share the weight.
    * t < ``t_knn``: the width is small and only the points near mu matter: the ``k`` nearest
      training points of mu (a k-d tree, ``scipy.spatial.cKDTree``; the example's own x_0,
      a training point, is among them unless the weight has moved elsewhere).

    The nearest-neighbour sums are in float64: at small t, x_t - E[x_0 | x_t] is of order t,
    a difference of numbers of order 1. The reference batch's (t >= t_knn) are in float32.

    Parameters
    ----------
    data : ndarray (M, D), the training set the batches are drawn from
    rng : numpy Generator for the random reference points
    n_reference : int, size of the reference batch for t >= t_knn (default 2048)
    k : int, neighbours for t < t_knn (default 256)
    t_knn : float, where the k-d tree takes over (default 0.12)
    """

    def __init__(self, data, rng, n_reference=2048, k=256, t_knn=0.12):
        from scipy.spatial import cKDTree  # scipy only when this target is used
        self.data = check_array(data, "MarginalTarget (data)").astype(np.float64)
        self.rng, self.n_reference, self.t_knn = rng, int(n_reference), float(t_knn)
        self.k = min(int(k), len(self.data))
        self.tree = cKDTree(self.data)

    def __call__(self, x0, x1, t):
        """The target u (N, D), float64, for the batch x0, x1 (N, D), t (N,)."""
        x0, x1, t = (np.asarray(a, dtype=np.float64) for a in (x0, x1, t))
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        u = x1 - x0                     # where t = 0 (x_t = x_0): nothing to average
        near = (t > 0) & (t < self.t_knn)
        far = t >= self.t_knn
        if near.any():
            _, idx = self.tree.query(xt[near] / (1 - t[near, None]), k=self.k)
            y = self.data[idx.reshape(near.sum(), -1)]            # (n, k, D)
            u[near] = self._field(xt[near], t[near], y)
        if far.any():
            extra = self.rng.integers(0, len(self.data), max(self.n_reference - len(x0), 0))
            y = np.concatenate([x0, self.data[extra]])            # (R, D), shared
            # in float32 (t >= t_knn: no digits to lose): 2.6 ms against 6.8 ms in float64
            # for 451 rows and 2048 points, the larger part of a training step
            f32 = [a.astype(np.float32) for a in (xt[far], t[far], y)]
            u[far] = self._field(*f32)
        return u

    @staticmethod
    def _field(xt, t, y):
        r"""(x - sum_j p_j y_j) / t with p = softmax_j(-|x - (1 - t) y_j|^2 / (2 t^2)), for
        xt (n, D), t (n,) and y (n, K, D), each row its own points, or (K, D) shared.

        |x - c y|^2 = |x|^2 - 2 c x.y + c^2 |y|^2 (c = 1 - t): products, not an (n, K, D)
        array of differences, and |x|^2, the same for every j, drops out of the softmax."""
        shared = y.ndim == 2
        xy = xt @ y.T if shared else np.einsum("nd,nkd->nk", xt, y)        # (n, K)
        c, t2 = (1 - t)[:, None], t[:, None] ** 2
        # -|x - c y_j|^2 / (2 t^2) without its |x|^2 term, the same for every j
        logits = (c / t2) * xy - (c**2 / (2 * t2)) * np.sum(y**2, axis=-1)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits, out=logits)
        p /= p.sum(axis=1, keepdims=True)                                   # posterior (n, K)
        mean = p @ y if shared else np.einsum("nk,nkd->nd", p, y)           # E[x_0 | x_t]
        return (xt - mean) / t[:, None]
