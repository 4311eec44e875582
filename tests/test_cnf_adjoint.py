r"""The adjoint method for the continuous flow (``CNF(gradient="adjoint")``,
``cnf_adjoint_backward``): its gradients against discretise-then-optimise and against central
differences, their order of accuracy, the trace term's share, and O(1) memory in the steps.

The adjoint's gradient is that of the continuous flow up to the backward solve's error, so
it is held to a bar that depends on the solver, never to round-off:

* RK4 in n steps: relative error about C h^4 with C ~ 2e-3 for these fields (measured, seed
  3: 6.6e-6, 3.9e-7, 2.4e-8, 1.5e-9 at n = 4, 8, 16, 32; ratios 16.9, 16.4, 16.2);
* dopri5 at rtol (atol = rtol / 100): below rtol (measured 7e-7, 3e-8, 6e-10 at rtol = 1e-4,
  1e-6, 1e-8 forward; 2e-6, 1.2e-7, 1.5e-9 inverse).

The reference for "the true gradient" is discretise-then-optimise at 128 RK4 steps, whose own
distance from the continuous gradient is about C 128^-4 ~ 6e-12.
"""
import tracemalloc

import numpy as np
import pytest

from nflows_edu import gradcheck
from nflows_edu.bijectors.cnf import CNF
from nflows_edu.gradcheck import numerical_gradient, rel_error

REFERENCE_STEPS = 128


def make_cnf(n_steps, gradient="discrete", adjoint_tol=None, scale=0.3, seed=3):
    """The same field (seed and perturbation) whatever the gradient and the steps."""
    rng = np.random.default_rng(seed)
    layer = CNF(2, (8,), n_steps, rng=rng, gradient=gradient, adjoint_tol=adjoint_tol)
    return gradcheck.randomize_parameters(layer, rng, scale)


def upstream(seed=0, n=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2)), rng.standard_normal((n, 2)), rng.standard_normal(n)


def gradients(layer, direction, x, dout, dlogdet):
    """[dx, then every parameter's gradient] of L = <dout, out> + <dlogdet, logdet>."""
    run = layer.forward if direction == "forward" else layer.inverse
    back = layer.backward if direction == "forward" else layer.inverse_backward
    layer.zero_grad()
    out, logdet, cache = run(x)
    dx = back(dout, dlogdet, cache)
    return [dx] + [g.copy() for _, _, g in layer.parameters()]


def worst_error(grads, reference):
    return max(rel_error(g, r) for g, r in zip(grads, reference))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_adjoint_rk4_error_falls_as_h4(direction):
    """Against the reference, the adjoint with n RK4 steps (forward and backward both at n)
    errs by O(h^4): doubling n divides the worst relative error over dx and every parameter
    by 16 (bars 12 to 22), and at n = 4 it is below 2e-5, at n = 16 below 1e-7. The error is
    well above round-off at n <= 16, so the ratio measures the method, not noise."""
    x, dout, dlogdet = upstream()
    reference = gradients(make_cnf(REFERENCE_STEPS), direction, x, dout, dlogdet)
    errors = [worst_error(gradients(make_cnf(n, "adjoint"), direction, x, dout, dlogdet),
                          reference) for n in (4, 8, 16)]
    assert errors[0] < 2e-5 and errors[2] < 1e-7, errors
    for coarse, fine in zip(errors, errors[1:]):
        assert 12 < coarse / fine < 22, errors


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_adjoint_dopri5_error_tracks_rtol(direction):
    """With dopri5 (atol = rtol / 100) the worst relative error is below rtol and falls by
    more than 10 for every factor 100 in rtol, with more evaluations at tighter rtol."""
    x, dout, dlogdet = upstream()
    reference = gradients(make_cnf(REFERENCE_STEPS), direction, x, dout, dlogdet)
    errors, nfes = [], []
    for rtol in (1e-4, 1e-6, 1e-8):
        layer = make_cnf(REFERENCE_STEPS, "adjoint", (rtol, rtol / 100))
        run = layer.forward if direction == "forward" else layer.inverse
        back = layer.backward if direction == "forward" else layer.inverse_backward
        layer.zero_grad()
        _, _, cache = run(x)
        grads = [back(dout, dlogdet, cache)] + [g.copy() for _, _, g in layer.parameters()]
        errors.append(worst_error(grads, reference))
        nfes.append(cache["nfe_backward"])
        assert errors[-1] < rtol, (rtol, errors)
    assert errors[0] > 10 * errors[1] > 100 * errors[2], errors
    assert nfes[0] < nfes[1] < nfes[2], nfes


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("trace_term", [False, True])
def test_adjoint_matches_discrete_and_central_differences_at_64_steps(direction, trace_term):
    """Gradient check in float64 at 64 RK4 steps, with dlogdet = 0 (the state's adjoint only)
    and dlogdet != 0 (the trace term, where tanh'' enters): the adjoint's dx and every
    parameter gradient are within 1e-8 (relative) of discretise-then-optimise and of central
    differences of the 64-step map (measured, worst over the four cases: 9e-10 against the
    discrete gradient, 1.1e-9 against the differences, whose own floor is ~6e-10). With a steeper field (scale 0.5) the trace term changes the gradients by
    more than 1e-3, so an adjoint that dropped it, or got its sign wrong, would fail here."""
    x, dout, dlogdet = upstream(n=4)
    dlogdet = dlogdet if trace_term else np.zeros_like(dlogdet)
    adjoint = make_cnf(64, "adjoint", scale=0.5)
    discrete = make_cnf(64, scale=0.5)
    grads = gradients(adjoint, direction, x, dout, dlogdet)
    assert worst_error(grads, gradients(discrete, direction, x, dout, dlogdet)) < 1e-8

    run = discrete.forward if direction == "forward" else discrete.inverse

    def loss():
        out, logdet, _ = run(x)
        return np.sum(dout * out) + np.sum(dlogdet * logdet)
    assert rel_error(grads[0], numerical_gradient(loss, x)) < 1e-8
    for (name, p, _), g in zip(discrete.parameters(), grads[1:]):
        assert rel_error(g, numerical_gradient(loss, p)) < 1e-8, name

    if trace_term:   # the trace term is not negligible: leaving it out is caught above
        without = gradients(adjoint, direction, x, dout, np.zeros_like(dlogdet))
        assert min(rel_error(g, w) for g, w in zip(grads, without)) > 1e-3


def test_adjoint_adds_to_the_gradients_already_there():
    """Like every backward pass, the adjoint adds its parameter gradients (it zeroes the
    field's gradients between its own evaluations, so it must put the old ones back)."""
    layer = make_cnf(8, "adjoint")
    x, dout, dlogdet = upstream()
    once = gradients(layer, "forward", x, dout, dlogdet)
    _, _, cache = layer.forward(x)
    layer.backward(dout, dlogdet, cache)        # a second time, without zero_grad
    for (name, _, g), g1 in zip(layer.parameters(), once[1:]):
        np.testing.assert_allclose(g, 2 * g1, rtol=1e-12, err_msg=name)


def peak_memory(n_steps, gradient, n=1000):
    """Peak bytes allocated by numpy during forward and backward (tracemalloc)."""
    layer = make_cnf(n_steps, gradient)
    x = np.random.default_rng(1).standard_normal((n, 2))
    tracemalloc.start()
    try:
        out, logdet, cache = layer.forward(x)
        layer.backward(np.ones_like(out), np.ones_like(logdet), cache)
        return tracemalloc.get_traced_memory()[1], cache
    finally:
        tracemalloc.stop()


def test_adjoint_memory_does_not_grow_with_the_steps():
    """The adjoint's cache holds the two ends only (the input and the output, (N, D) each),
    and its peak memory over forward and backward is the same at 8 and 64 steps (within 5%).
    Discretise-then-optimise keeps the 65 states: its peak grows by at least 90% of the 56
    extra states' N (D + 1) 8 bytes, which shows the measurement sees per-step memory."""
    n = 1000
    (adj8, cache), (adj64, _) = peak_memory(8, "adjoint", n), peak_memory(64, "adjoint", n)
    arrays = [v for v in cache.values() if isinstance(v, np.ndarray)]
    assert set(cache) == {"ends", "t0", "t1", "nfe", "V", "nfe_backward", "reconstruction_error"}
    assert cache["V"] is None   # the exact trace: no probes
    assert not arrays and [e.shape for e in cache["ends"]] == [(n, 2), (n, 2)]
    assert cache["reconstruction_error"] < 1e-6     # the backward re-solve found the input
    assert adj64 <= 1.05 * adj8, (adj8, adj64)
    disc8, disc64 = peak_memory(8, "discrete", n)[0], peak_memory(64, "discrete", n)[0]
    assert disc64 - disc8 >= 0.9 * 56 * n * 3 * 8, (disc8, disc64)


def test_cnf_refuses_bad_gradient_options():
    with pytest.raises(ValueError, match="CNF.*gradient"):
        CNF(2, gradient="autograd")
    with pytest.raises(ValueError, match="CNF.*adjoint_tol is for"):
        CNF(2, adjoint_tol=(1e-6, 1e-8))
    with pytest.raises(ValueError, match="CNF.*adjoint_tol"):
        CNF(2, gradient="adjoint", adjoint_tol=(1e-6, 0.0))


def test_ffjord_records_the_adjoint_and_a_loaded_copy_uses_it(rng, tmp_path):
    """``gradient`` and ``adjoint_tol`` are in the config, so save / load rebuilds a flow whose
    blocks train with the same gradient (and files saved before the option load as discrete)."""
    import nflows_edu as nf
    from nflows_edu import models
    flow = models.ffjord(2, hidden=(8,), n_steps=4, n_blocks=2, rng=rng, gradient="adjoint",
                         adjoint_tol=(1e-6, 1e-8))
    assert flow.config["gradient"] == "adjoint" and flow.config["adjoint_tol"] == [1e-6, 1e-8]
    loaded = nf.load(nf.save(flow, tmp_path / "m.npz"))
    assert [(b.gradient, b.adjoint_tol) for b in loaded.bijector.layers] == [
        ("adjoint", (1e-6, 1e-8))] * 2
    old_config = {k: v for k, v in flow.config.items() if k not in ("gradient", "adjoint_tol")}
    assert all(b.gradient == "discrete" for b in models.build(old_config).bijector.layers)
