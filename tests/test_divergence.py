"""Every path of a diverging run ends the same way: ``NonFiniteLossError`` naming the step
that diverged and the step whose parameters were kept, those parameters and buffers put back
exactly, no NumPy warning shown; through the CLI, exit 2 and one line.

Reported: of 8 runs (nice and realnvp, float64 and float32, lr 1e4 and 1e100), 3 raised a
layer's input ValueError (non-finite activations from finite parameters) without restoring
the parameters, and all printed NumPy overflow warnings from the Adam step.
"""
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from numpy.random import default_rng

from nflows_edu import datasets, models, train
from nflows_edu.bijectors.residual import ConvergenceError
from nflows_edu.gradcheck import randomize_parameters

CASES = [(name, dtype, lr) for name in ("nice", "realnvp")
         for dtype in (np.float64, np.float32) for lr in (1e4, 1e100)]


def run(flow, lr, steps=300, **kwargs):
    """The reported call, with a constant learning rate so a shorter run retraces it."""
    x = datasets.toy("8gaussians", 4000, default_rng(0))
    return train.fit(flow, x, steps=steps, batch_size=128, lr=lr, rng=default_rng(2),
                     schedule="constant", progress=False, **kwargs)


def steps_named(err):
    """(the 1-based step that diverged, the step whose parameters were put back)."""
    found = re.search(r"diverged at step (\d+) of \d+.*?(initial parameters|parameters of step "
                      r"(\d+))", str(err))
    assert found, str(err)
    return int(found.group(1)), 0 if found.group(3) is None else int(found.group(3))


@pytest.mark.parametrize("name, dtype, lr", CASES)
def test_a_diverging_run_stops_with_the_last_good_parameters_and_no_warning(name, dtype, lr):
    build = models.MODELS[name]
    flow = build(2, rng=default_rng(1), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy RuntimeWarning would fail the run
        with pytest.raises(train.NonFiniteLossError) as caught:
            run(flow, lr)
    diverged, kept = steps_named(caught.value)
    assert kept == diverged - 1
    # "the parameters of step k" are those step k computed its loss with: k - 1 updates
    reference = build(2, rng=default_rng(1), dtype=dtype)
    if kept > 1:
        run(reference, lr, steps=kept - 1)
    for (key, got, _), (_, want, _) in zip(flow.parameters(), reference.parameters()):
        np.testing.assert_array_equal(got, want, err_msg=key)


def test_buffers_are_put_back_too():
    # BatchNorm's running averages change in every training step's forward pass: the state
    # put back is the one right after step k's loss_and_grad, the step it names
    flow = models.maf(2, n_layers=3, hidden=(16,), batch_norm=True, rng=default_rng(1))
    real, states = flow.loss_and_grad, []

    def recording(x):
        loss = real(x)
        states.append(flow.state_dict())
        return loss
    flow.loss_and_grad = recording
    with pytest.raises(train.NonFiniteLossError) as caught:
        run(flow, 1e100)
    _, kept = steps_named(caught.value)
    assert kept >= 1 and any(k.endswith("running_mean") for k in states[kept - 1])
    for key, value in flow.state_dict().items():
        np.testing.assert_array_equal(value, states[kept - 1][key], err_msg=key)


def test_non_finite_parameters_after_the_last_step_are_divergence_too():
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=default_rng(1))
    real_step = train.FusedAdam.step

    def step_then_break(opt):
        real_step(opt)
        if opt.t == 5:
            opt.parameters[0][1][...] = np.inf
    train.FusedAdam.step = step_then_break
    try:
        with pytest.raises(train.NonFiniteLossError, match="step 5 of 5") as caught:
            run(flow, 1e-3, steps=5)
    finally:
        train.FusedAdam.step = real_step
    assert "parameters of step 5" in str(caught.value)
    assert all(np.isfinite(p).all() for _, p, _ in flow.parameters())


def test_a_root_finder_that_stops_converging_is_divergence():
    flow = models.impflow(2, n_blocks=1, hidden=(8,), rng=default_rng(1))
    calls = {"n": 0}
    real = flow.loss_and_grad

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConvergenceError("ImplicitBlock: the root finder did not converge")
        return real(x)
    flow.loss_and_grad = failing
    with pytest.raises(train.NonFiniteLossError, match="step 3 of 10.*root finder") as caught:
        run(flow, 1e-3, steps=10)
    assert isinstance(caught.value.__cause__, ConvergenceError)


def test_a_mistake_in_the_call_is_not_called_divergence():
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=default_rng(1))

    def wrong_shape(x):
        raise ValueError("AffineCoupling: expected an array of shape (N, 2), got (N, 3)")
    flow.loss_and_grad = wrong_shape
    with pytest.raises(ValueError, match="expected an array of shape") as caught:
        run(flow, 1e-3, steps=3)
    assert not isinstance(caught.value, train.NonFiniteLossError)


def test_reverse_kl_divergence_ends_the_same_way():
    flow = models.planar(2, n_layers=4, rng=default_rng(1))
    log_target, grad_log_target = datasets.energy_target("U1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(train.NonFiniteLossError, match="diverged at step"):
            train.fit_reverse_kl(flow, log_target, grad_log_target, steps=200, lr=1e100,
                                 rng=default_rng(2), progress=False)
    assert all(np.isfinite(p).all() for _, p, _ in flow.parameters())


def test_training_starts_from_an_exact_lipschitz_bound():
    # weights moved without the power iteration (here by 0.5 N(0, 1)) would start training
    # with a bound that does not hold: impflow's root finder then failed at step 1
    flow = randomize_parameters(models.impflow(2, n_blocks=2, hidden=(16, 16),
                                               rng=default_rng(1)), default_rng(2), 0.5)
    history = run(flow, 3e-3, steps=20)
    assert np.isfinite(history["loss"]).all()


@pytest.mark.parametrize("lr", ["1e4", "1e100"])
def test_the_cli_says_one_line_exits_2_and_shows_no_warning(tmp_path, lr):
    result = subprocess.run(
        [sys.executable, "-m", "nflows_edu", "train", "--model", "realnvp", "--data",
         "8gaussians", "--steps", "300", "--batch-size", "128", "--lr", lr, "--warmup", "0",
         "--out", str(tmp_path), "--no-progress", "--dtype", "float32"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nflows-edu: error: fit: training diverged"), \
        result.stderr
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr
