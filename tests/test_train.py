"""train.fit: what a diverging, interrupted or mis-configured run does."""
import numpy as np
import pytest

from nflows_edu import datasets, models, threads, train


def _data(rng, n=4000):
    return datasets.toy("8gaussians", n, rng)


@pytest.mark.parametrize("build", [models.nice, models.realnvp])
def test_huge_learning_rate_stops_and_restores_usable_parameters(build, rng):
    flow = build(2, n_layers=2, hidden=(16,), rng=rng)
    data = _data(rng)
    with pytest.raises(train.NonFiniteLossError, match="diverged at step"):
        train.fit(flow, data, steps=300, batch_size=128, lr=1e4, rng=rng, progress=False)
    assert all(np.isfinite(p).all() for _, p, _ in flow.parameters())
    assert np.isfinite(flow.log_prob(data)).all()


def test_step_zero_message_names_the_initial_parameters(rng):
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=rng)
    flow.loss_and_grad = lambda x: float("nan")
    with pytest.raises(train.NonFiniteLossError, match="initial parameters"):
        train.fit(flow, _data(rng), steps=5, progress=False)


def test_finite_but_exploding_loss_is_divergence(rng):
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=rng)
    real = flow.loss_and_grad
    losses = iter([3.0, 2.9, 2.8, 5e3, 2.0, 2.0])
    flow.loss_and_grad = lambda x: (real(x), next(losses))[1]
    with pytest.raises(train.NonFiniteLossError, match="step 4 .*exploded"):
        train.fit(flow, _data(rng), steps=6, progress=False)


@pytest.mark.parametrize("kwargs, words", [
    (dict(lr=float("nan")), "lr"), (dict(lr=float("inf")), "lr"), (dict(lr=-1e-3), "lr"),
    (dict(lr=0), "lr"), (dict(clip=-1), "clip"), (dict(clip=float("nan")), "clip"),
    (dict(eval_every=0), "eval_every"), (dict(steps=0), "steps"), (dict(steps=2.5), "steps"),
    (dict(batch_size=0), "batch_size"), (dict(warmup=-1), "warmup"),
    (dict(diverge=0), "diverge"), (dict(keep_best=True), "val_data"),
    (dict(threads=0), "threads"), (dict(threads="many"), "threads"),
    (dict(betas=(0.9, 1.0)), "betas"), (dict(betas=(0.9,)), "betas"),
    (dict(betas=(-0.1, 0.99)), "betas"),
])
def test_fit_refuses_bad_arguments(kwargs, words, rng):
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=rng)
    before = [p.copy() for _, p, _ in flow.parameters()]
    with pytest.raises(ValueError, match=words):
        train.fit(flow, _data(rng, 200), steps=kwargs.pop("steps", 3), progress=False, **kwargs)
    assert all(np.array_equal(a, p) for a, (_, p, _) in zip(before, flow.parameters()))


def test_keep_best_restores_the_best_validation_parameters(rng):
    flow = models.realnvp(2, n_layers=2, hidden=(16,), rng=rng)
    data, val = _data(rng, 2000), _data(rng, 500)
    snapshots = {}
    real = train._evaluate

    def spy(flow_, history, step, *args):
        real(flow_, history, step, *args)
        snapshots[step + 1] = [p.copy() for _, p, _ in flow_.parameters()]

    train._evaluate = spy
    try:
        h = train.fit(flow, data, steps=60, batch_size=64, lr=3e-2, rng=rng, val_data=val,
                      eval_every=10, keep_best=True, progress=False)
    finally:
        train._evaluate = real
    best = h["step"][int(np.argmin(h["val_nll"]))]
    assert h["best_step"] == best and h["best_val_nll"] == min(h["val_nll"])
    for kept, (_, p, _) in zip(snapshots[best], flow.parameters()):
        np.testing.assert_array_equal(kept, p)
    assert train.nll(flow, val) == pytest.approx(min(h["val_nll"]), rel=1e-12)


def test_ctrl_c_keeps_the_last_completed_step(rng):
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=rng)
    real = flow.loss_and_grad
    calls = {"n": 0}

    def interrupted(x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(x)

    flow.loss_and_grad = interrupted
    h = train.fit(flow, _data(rng), steps=10, progress=False)
    assert h["interrupted"] and len(h["loss"]) == 3
    assert np.isfinite(flow.log_prob(_data(rng, 10))).all()


def test_auto_threads_choose_one_thread_for_small_products(rng):
    small = models.realnvp(2, hidden=(64, 64), rng=rng)
    big = models.realnvp(64, hidden=(1024, 1024), rng=rng)
    assert threads.choose_threads("auto", small, 512) == 1
    assert threads.choose_threads("auto", big, 512) is None
    assert threads.choose_threads(3) == 3 and threads.choose_threads(None) is None
    with threads.blas_threads(1) as n:
        from threadpoolctl import threadpool_info
        assert n == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")


def test_validation_runs_in_eval_mode_and_keep_best_restores_buffers(rng):
    """With BatchNorm: validation must not update the running averages, and the best state
    includes them."""
    flow = models.maf(2, n_layers=2, hidden=(8, 8), batch_norm=True, rng=rng)
    data, val = _data(rng, 2000), _data(rng, 500) + 5.0  # a shifted validation set
    seen = []
    real = train.nll

    def spy(flow_, data_, *args):
        seen.append(flow_.training)
        return real(flow_, data_, *args)

    train.nll = spy
    try:
        h = train.fit(flow, data, steps=40, batch_size=64, rng=rng, val_data=val,
                      eval_every=10, keep_best=True, progress=False)
    finally:
        train.nll = real
    assert seen == [False] * 4 and flow.training
    means = [b for n, b in flow.named_buffers() if "mean" in n]
    assert means and all(np.abs(m).max() < 2.0 for m in means)  # never pulled towards +5
    flow.eval()
    assert train.nll(flow, val) == pytest.approx(h["best_val_nll"], rel=1e-12)


def test_ema_returns_the_running_average_of_the_steps(rng, monkeypatch):
    """With ema and no validation, fit returns a_T, where a_0 = p_0 and
    a_t = a_{t-1} + (1 - beta_t) (p_t - a_{t-1}), beta_t = min(decay, (1 + t) / (10 + t)),
    recomputed here from the parameters recorded after every step."""
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=rng)
    initial = [p.copy() for _, p, _ in flow.parameters()]
    trajectory = []
    real = train.ParameterAverage.update

    def spy(self):
        trajectory.append([p.copy() for p in self.params])
        real(self)

    monkeypatch.setattr(train.ParameterAverage, "update", spy)
    train.fit(flow, _data(rng, 1000), steps=40, batch_size=64, lr=3e-2, rng=rng, ema=0.95,
              progress=False)
    average = [p.copy() for p in initial]
    for t, params in enumerate(trajectory, start=1):
        beta = min(0.95, (1 + t) / (10 + t))
        for a, p in zip(average, params):
            a += (1 - beta) * (p - a)
    assert len(trajectory) == 40
    for a, (_, p, _) in zip(average, flow.parameters()):
        np.testing.assert_array_equal(a, p)
    assert max(np.abs(a - p).max() for a, p in zip(average, trajectory[-1])) > 1e-3


def test_ema_validates_and_keeps_the_average(rng):
    """keep_best with ema: the kept parameters are an average (not the raw parameters of any
    step), and their validation NLL is the best one recorded."""
    flow = models.realnvp(2, n_layers=2, hidden=(16,), rng=rng)
    data, val = _data(rng, 2000), _data(rng, 500)
    h = train.fit(flow, data, steps=60, batch_size=64, lr=3e-2, rng=rng, val_data=val,
                  eval_every=10, keep_best=True, ema=0.9, progress=False)
    assert train.nll(flow, val) == pytest.approx(min(h["val_nll"]), rel=1e-12)
    with pytest.raises(ValueError, match="ema"):
        train.fit(flow, data, steps=3, ema=1.0, progress=False)


def test_parameter_average_swap_puts_the_parameters_back(rng):
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=rng)
    params = list(flow.parameters())
    average = train.ParameterAverage(params, 0.9)
    for _, p, _ in params:
        p += 1.0
    average.update()
    own = [p.copy() for _, p, _ in params]
    with average.swapped():
        assert all(np.array_equal(p, a) for (_, p, _), a in zip(params, average.averages))
    assert all(np.array_equal(p, o) for (_, p, _), o in zip(params, own))
