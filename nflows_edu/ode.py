r"""Ordinary differential equation solvers in NumPy: what a continuous flow integrates.

An ODE ``dy/dt = f(t, y)`` from ``t0`` to ``t1``. The state ``y`` is an array of any shape (a
batch: every row integrated at once, with the same steps); ``f(t, y)`` returns an array of
the same shape. Integrating backwards (``t1 < t0``) works the same way, with negative steps.

* ``rk4``: classical fourth-order Runge-Kutta with ``n_steps`` equal steps h = (t1 - t0) / n:

      k1 = f(t, y)
      k2 = f(t + h/2, y + h/2 k1)
      k3 = f(t + h/2, y + h/2 k2)
      k4 = f(t + h,   y + h k3)
      y_next = y + h/6 (k1 + 2 k2 + 2 k3 + k4)

  Its global error is O(h^4): doubling ``n_steps`` divides it by about 2^4 = 16. A fixed
  number of steps makes the solution a fixed, differentiable function of y0 and of the
  field's parameters: ``rk4_step_backward`` is the exact VJP of one step, and backpropagating
  through every step (discretise-then-optimise) gives the exact gradient of the discrete map.

* ``dopri5``: Dormand-Prince 5(4), adaptive. Each step computes a fifth-order solution
  y5 and an embedded fourth-order one y4 from the same seven stages (the last stage is the
  next step's first: "first same as last", six new evaluations per step), and accepts the
  step if the scaled error

      err = sqrt(mean(((y5 - y4) / (atol + rtol max(|y|, |y5|)))^2))

  is at most 1; the next step is h * min(10, max(0.2, 0.9 err^(-1/5))) either way.

Both return the number of evaluations of ``f`` (NFE), the cost measure of the continuous
flow papers.

References
----------
Hairer, Norsett, Wanner (1993), "Solving Ordinary Differential Equations I", sections II.1
(Runge-Kutta), II.4 (step size control, the starting step) and II.5 (Dormand-Prince, table
5.2); Dormand, Prince (1980), J. Comput. Appl. Math. 6(1).
"""
import numpy as np

from .core import NonFiniteError


def _check_finite_state(y, t, where, advice):
    """``NonFiniteError`` (a ``ValueError``, which ``train.fit`` treats as a diverged run) if
    the state ``y`` at time ``t`` holds NaN or inf."""
    if not np.all(np.isfinite(y)):
        raise NonFiniteError(f"{where}: non-finite state (NaN or inf) at t = {t:.6g}; {advice}")


def rk4_step(f, t, y, h):
    r"""One classical Runge-Kutta step from (t, y) with step h (see the module docstring).

    Returns y_next, same shape as y. Four evaluations of ``f``.
    """
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + h / 2, y + h / 2 * k2)
    k4 = f(t + h, y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def rk4_step_backward(f_cached, f_backward, t, y, h, dy_next):
    r"""VJP of one ``rk4_step``: the gradient with respect to y of  <dy_next, y_next(y)>.

    The stages are recomputed from (t, y) (only the states at the step boundaries are kept
    by ``rk4``), this time keeping the caches the field's backward pass needs. Then, reading
    ``rk4_step`` from the bottom up, with u_i the input of stage i
    (u1 = y, u2 = y + h/2 k1, u3 = y + h/2 k2, u4 = y + h k3):

        dk1 = h/6 dy_next;  dk2 = dk3 = h/3 dy_next;  dk4 = h/6 dy_next;  dy = dy_next
        du4 = f^T dk4;   dy += du4;   dk3 += h du4
        du3 = f^T dk3;   dy += du3;   dk2 += h/2 du3
        du2 = f^T dk2;   dy += du2;   dk1 += h/2 du2
        du1 = f^T dk1;   dy += du1

    where f^T dk is the field's VJP at that stage's input (``f_backward(dk, cache)``, which
    also adds the field's parameter gradients, as every backward pass in the library does).

    Parameters
    ----------
    f_cached : callable ``(t, y) -> (dy/dt, cache)``
    f_backward : callable ``(dk, cache) -> du``, the VJP of ``f_cached`` with respect to y
    t, h : float, the step's start and size
    y : ndarray, the state at t
    dy_next : ndarray like y, the upstream gradient of the state at t + h

    Returns
    -------
    dy : ndarray like y
    """
    k1, c1 = f_cached(t, y)
    k2, c2 = f_cached(t + h / 2, y + h / 2 * k1)
    k3, c3 = f_cached(t + h / 2, y + h / 2 * k2)
    _, c4 = f_cached(t + h, y + h * k3)
    dk1 = dk4 = h / 6 * dy_next
    dk2 = dk3 = h / 3 * dy_next
    dy = dy_next.copy()
    du = f_backward(dk4, c4)
    dy += du
    dk3 = dk3 + h * du
    du = f_backward(dk3, c3)
    dy += du
    dk2 = dk2 + h / 2 * du
    du = f_backward(dk2, c2)
    dy += du
    dk1 = dk1 + h / 2 * du
    dy += f_backward(dk1, c1)
    return dy


def _check_steps(n_steps, where):
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"{where}: expected a positive integer n_steps, got {n_steps!r}")
    return int(n_steps)


def rk4(f, y0, t0, t1, n_steps, return_states=False):
    r"""Integrate dy/dt = f(t, y) from t0 to t1 with ``n_steps`` classical RK4 steps.

    Parameters
    ----------
    f : callable ``(t, y) -> dy/dt``, an array shaped like y
    y0 : ndarray, any shape (a batch of states)
    t0, t1 : float; t1 < t0 integrates backwards
    n_steps : int >= 1; h = (t1 - t0) / n_steps
    return_states : bool, also return the states at the step boundaries (what
        ``rk4_step_backward`` needs to backpropagate through the steps)

    Returns
    -------
    y1 : ndarray like y0, the solution at t1
    nfe : int, evaluations of f (4 n_steps)
    states : list of n_steps + 1 arrays, y_0 = y0, ..., y_n = y1 (only with return_states),
        y_k the state at t0 + k h

    Raises ``ValueError`` for a non-positive ``n_steps``, and ``core.NonFiniteError`` (a
    ``ValueError``) for a state that becomes NaN or inf (a step too large for the field, or a
    field that blows up).
    """
    n_steps = _check_steps(n_steps, "rk4")
    h = (t1 - t0) / n_steps
    y = np.asarray(y0)
    states = [y]
    for k in range(n_steps):
        t = t0 + k * h
        y = rk4_step(f, t, y, h)
        _check_finite_state(y, t + h, "rk4", f"reduce the step (more n_steps than {n_steps}) "
                            "or check the field")
        if return_states:   # otherwise O(1) memory in n_steps (what the adjoint method relies on)
            states.append(y)
    if return_states:
        return y, 4 * n_steps, states
    return y, 4 * n_steps


# Dormand-Prince 5(4) (Hairer, Norsett, Wanner, table II.5.2): nodes c, stage coefficients A,
# the fifth-order weights B5 (= the last row of A: FSAL) and the embedded fourth-order B4.
DOPRI_C = np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1])
DOPRI_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
DOPRI_B5 = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0])
DOPRI_B4 = np.array([5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100,
                     1 / 40])
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0


def _error_norm(err, y, y_new, rtol, atol):
    """The RMS of the local error scaled by atol + rtol max(|y|, |y_new|): accept if <= 1."""
    scale = atol + rtol * np.maximum(np.abs(y), np.abs(y_new))
    return float(np.sqrt(np.mean((err / scale) ** 2)))


def _initial_step(f, t0, y0, k0, direction, rtol, atol):
    r"""Hairer's starting step (section II.4): h0 = 0.01 ||y0|| / ||f(t0, y0)||, then
    h1 = (0.01 / max(||f||, ||f'|| h0))^(1/5) with f' estimated by one Euler step;
    h = min(100 h0, h1). Norms scaled by atol + rtol |y0|. One evaluation of f."""
    scale = atol + rtol * np.abs(y0)
    d0 = np.sqrt(np.mean((y0 / scale) ** 2))
    d1 = np.sqrt(np.mean((k0 / scale) ** 2))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    k1 = f(t0 + direction * h0, y0 + direction * h0 * k0)
    d2 = np.sqrt(np.mean(((k1 - k0) / scale) ** 2)) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def dopri5(f, y0, t0, t1, rtol=1e-6, atol=1e-8, max_steps=10000):
    r"""Integrate dy/dt = f(t, y) from t0 to t1 with adaptive Dormand-Prince 5(4) steps.

    The error of every accepted step, estimated by the difference of the fifth- and
    fourth-order solutions, is within ``atol + rtol |y|`` in the RMS sense (see the module
    docstring); the step is propagated with the fifth-order solution (local extrapolation).
    The global error is not controlled directly: for a stable problem it is a small multiple
    of the tolerance.

    Parameters
    ----------
    f : callable ``(t, y) -> dy/dt``
    y0 : ndarray, any shape (a batch: one step size for the whole batch, the worst row's)
    t0, t1 : float; t1 < t0 integrates backwards
    rtol, atol : float > 0, the relative and absolute tolerances
    max_steps : int, the most steps (accepted and rejected) before giving up

    Returns
    -------
    y1 : ndarray like y0, the solution at t1
    nfe : int, evaluations of f

    Raises
    ------
    ValueError
        ``rtol`` or ``atol`` not positive; a non-finite state that smaller steps do not cure
        (the step shrinks to round-off); ``max_steps`` reached before t1.
    """
    if not (np.isfinite(rtol) and rtol > 0 and np.isfinite(atol) and atol > 0):
        raise ValueError(f"dopri5: expected positive tolerances, got rtol={rtol!r}, "
                         f"atol={atol!r}")
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"dopri5: expected a positive integer max_steps, got {max_steps!r}")
    y = np.asarray(y0)
    t, direction = float(t0), np.sign(t1 - t0)
    if direction == 0:
        return y, 0
    k = f(t, y)
    nfe = 1
    _check_finite_state(k, t, "dopri5", "the field is not finite at the initial state; check "
                        "the field")
    h = _initial_step(f, t, y, k, direction, rtol, atol)
    nfe += 1
    for _ in range(int(max_steps)):
        h = min(h, abs(t1 - t))
        stages = [k]
        for i in range(1, 7):
            yi = y + direction * h * sum(a * s for a, s in zip(DOPRI_A[i], stages))
            stages.append(f(t + direction * DOPRI_C[i] * h, yi))
        nfe += 6
        y5 = yi                                   # the last stage's input is y + h sum b5 k
        err = direction * h * sum(b * s for b, s in zip(DOPRI_B5 - DOPRI_B4, stages))
        norm = _error_norm(err, y, y5, rtol, atol)
        if not np.isfinite(norm):                 # a step too large for the field: shrink it
            h *= MIN_FACTOR
            if h <= 10 * np.finfo(float).eps * max(1.0, abs(t)):
                raise NonFiniteError(f"dopri5: non-finite state (NaN or inf) at t = {t:.6g} that "
                                 "no step size avoids; reduce the step / check the field")
            continue
        if norm <= 1:
            t, y, k = t + direction * h, y5, stages[6]    # first same as last
            if abs(t1 - t) <= 10 * np.finfo(float).eps * max(1.0, abs(t1)):
                return y, nfe
        factor = MAX_FACTOR if norm == 0 else SAFETY * norm ** (-1 / 5)
        h *= min(MAX_FACTOR, max(MIN_FACTOR, factor))
    raise ValueError(f"dopri5: reached max_steps={max_steps} at t = {t:.6g} before "
                     f"t1 = {t1:.6g}; raise max_steps or loosen rtol / atol (the field may "
                     "be stiff, or blow up near that time)")
