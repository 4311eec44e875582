"""MADE masks and the autoregressive property, MAF/IAF specifics, and the Numba kernel against
the plain NumPy loop (the registry checks in test_bijectors.py cover round trips, log-dets and
VJPs)."""
import numpy as np
import pytest

from nflows_edu import gradcheck, kernels
from nflows_edu.bijectors import IAF, MAF
from nflows_edu.bijectors.autoregressive import maf_inverse_reference
from nflows_edu.nn import MADE, MaskedLinear, input_degrees


def _order(kind, dim, rng):
    return rng.permutation(dim) if kind == "permutation" else kind


@pytest.mark.parametrize("kind", ["natural", "reversed", "permutation"])
@pytest.mark.parametrize("hidden", [(), (5,), (7, 4), (9, 6, 8)])
def test_mask_product_is_strictly_triangular_in_the_order(kind, hidden, rng):
    dim = 5
    made = MADE(dim, hidden, _order(kind, dim, rng), rng=rng)
    paths = made.mask_product()  # (D, 2D): input i -> output j
    rank = np.argsort(made.order)  # rank[i] = position of feature i in the order
    for half in (paths[:, :dim], paths[:, dim:]):
        in_order = half[np.ix_(made.order, made.order)]  # rows/columns in generation order
        assert np.array_equal(in_order, np.triu(in_order, 1))  # i -> j only if rank i < rank j
        # and every allowed connection exists: no degree was dropped
        allowed = rank[:, None] < rank[None, :]
        assert (half[allowed] > 0).all()


@pytest.mark.parametrize("kind", ["natural", "reversed", "permutation"])
def test_made_jacobian_is_strictly_triangular(kind, rng):
    dim = 4
    made = gradcheck.randomize_parameters(MADE(dim, (8, 8), _order(kind, dim, rng), "tanh",
                                               rng=rng), rng, 0.5)
    x = rng.standard_normal((3, dim))
    jac = gradcheck.numerical_jacobian(lambda v: made.forward(v)[0], x)  # (N, 2D, D)
    p = made.order
    for half in (jac[:, :dim], jac[:, dim:]):
        in_order = half[:, p][:, :, p]  # [n, output rank, input rank]
        assert np.abs(np.triu(in_order, 0)).max() == 0.0  # exactly: the masks cut the paths
        assert np.abs(np.tril(in_order, -1)).max() > 1e-3  # and the rest is really used


def test_masked_weights_get_exactly_zero_gradient(rng):
    made = gradcheck.randomize_parameters(MADE(4, (6, 5), "reversed", "tanh", rng=rng), rng)
    out, cache = made.forward(rng.standard_normal((7, 4)))
    made.backward(rng.standard_normal(out.shape), cache)
    for layer in made.masked_layers:
        assert (layer.grads["W"][layer.mask == 0] == 0).all()
        assert np.abs(layer.grads["W"][layer.mask == 1]).min() > 0


@pytest.mark.parametrize("draw", range(5))
def test_made_and_masked_linear_backward(draw):
    rng = np.random.default_rng(draw)
    dim = int(rng.integers(2, 6))
    made = MADE(dim, (7, 6), rng.permutation(dim), "tanh", rng=rng)
    layer = MaskedLinear(rng.integers(0, 2, (3, 4)), rng)
    for module, n_in in ((made, dim), (layer, 3)):
        gradcheck.randomize_parameters(module, rng, 0.5)
        errors = gradcheck.check_module(module, rng.standard_normal((5, n_in)), rng)
        assert max(errors.values()) <= 1e-6, errors


@pytest.mark.parametrize("order", [[0, 1, 1], [0, 1, 3], [[0, 1, 2]], "random", [0.0, 1.0, 2.0]])
def test_bad_order_is_a_value_error(order):
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, (4,), order)
    with pytest.raises(ValueError, match="permutation"):
        input_degrees(3, order)


def test_too_few_hidden_units_is_a_value_error():
    with pytest.raises(ValueError, match="at least D - 1 = 4"):
        MADE(5, (8, 3))
    MADE(5, (4, 4))  # exactly D - 1 is enough
    with pytest.raises(ValueError, match="dim >= 2"):
        MADE(1, (4,))


def test_untrained_maf_is_the_identity(rng):
    x = rng.standard_normal((6, 3))
    for layer in (MAF(3, rng=rng), IAF(3, rng=rng)):
        z, logdet, _ = layer.forward(x)
        assert np.array_equal(z, x) and np.array_equal(logdet, np.zeros(6))


def test_sequential_directions_say_which_direction_trains(rng):
    maf, iaf = MAF(3, rng=rng), IAF(3, rng=rng)
    assert maf.vjps == ("forward",) and iaf.vjps == ("inverse",)
    with pytest.raises(NotImplementedError, match="train MAF in the forward direction"):
        maf.inverse_backward(np.ones((2, 3)), np.ones(2), None)
    with pytest.raises(NotImplementedError, match="train IAF in the sampling direction"):
        iaf.backward(np.ones((2, 3)), np.ones(2), None)


def test_maf_log_scale_is_bounded(rng):
    layer = MAF(3, (8,), s_max=1.5, rng=rng)
    gradcheck.randomize_parameters(layer, rng, 20.0)
    _, logdet, _ = layer.forward(rng.standard_normal((50, 3)))
    assert np.abs(logdet).max() < 3 * 1.5


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", range(6))
def test_kernel_equals_the_numpy_reference(case, dtype):
    rng = np.random.default_rng(case)
    dim = int(rng.integers(2, 9))
    hidden = [(), (dim - 1,), (13, 7 + dim), (3 * dim, 2 * dim, 11)][case % 4]
    act = ["tanh", "relu", "leaky_relu"][case % 3]
    made = MADE(dim, hidden, rng.permutation(dim), act, rng=rng, dtype=dtype)
    gradcheck.randomize_parameters(made, rng, 0.3)
    n = int(rng.integers(1, 3 * kernels.TILE))  # full tiles and a ragged last one
    z = rng.standard_normal((n, dim)).astype(dtype)
    x, logdet = kernels.maf_inverse(made, z, 2.0)
    x_ref, logdet_ref = maf_inverse_reference(made, z, 2.0)
    assert x.dtype == dtype and logdet.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-4
    assert np.abs(x - x_ref).max() <= tol * max(1.0, np.abs(x_ref).max())
    assert np.abs(logdet - logdet_ref).max() <= tol * max(1.0, np.abs(logdet_ref).max())


def test_kernel_tile_size_does_not_change_the_result(rng):
    made = gradcheck.randomize_parameters(MADE(5, (16, 16), "reversed", "tanh", rng=rng), rng)
    z = rng.standard_normal((45, 5))
    results = [kernels.maf_inverse(made, z, 3.0, tile=t) for t in (1, 7, 32, 64)]
    for x, logdet in results[1:]:
        assert np.abs(x - results[0][0]).max() <= 1e-12
        assert np.abs(logdet - results[0][1]).max() <= 1e-12


def test_kernel_thread_count_does_not_change_the_result(rng):
    """The tiles run in parallel; each example is computed by one thread, in the same order,
    so 1, 2 or 3 threads give the same bits, and the same numbers as the reference."""
    made = gradcheck.randomize_parameters(MADE(6, (24, 24), rng.permutation(6), "tanh", rng=rng), rng, 0.3)
    z = rng.standard_normal((5 * kernels.TILE + 3, 6))
    results = [kernels.maf_inverse(made, z, 3.0, threads=t) for t in (1, 2, 3)]
    for x, logdet in results[1:]:
        assert np.array_equal(x, results[0][0]) and np.array_equal(logdet, results[0][1])
    x_ref, logdet_ref = maf_inverse_reference(made, z, 3.0)
    assert np.abs(results[0][0] - x_ref).max() <= 1e-12 * max(1.0, np.abs(x_ref).max())


def test_kernel_uses_as_many_threads_as_blas():
    from threadpoolctl import threadpool_limits

    from nflows_edu import threads
    with threadpool_limits(1, user_api="blas"):
        assert threads.blas_thread_count() == 1
    with threadpool_limits(2, user_api="blas"):
        assert threads.blas_thread_count() == 2


def test_iaf_sampling_is_one_made_pass_of_its_maf(rng):
    iaf = gradcheck.randomize_parameters(IAF(4, (8,), "natural", "tanh", rng=rng), rng, 0.5)
    z = rng.standard_normal((5, 4))
    x, logdet, _ = iaf.inverse(z)
    x_maf, logdet_maf, _ = iaf.bijector.forward(z)
    assert np.array_equal(x, x_maf) and np.array_equal(logdet, logdet_maf)


# ------------------------------------------------------------------------- BatchNorm, models
from nflows_edu import io, models  # noqa: E402
from nflows_edu.bijectors import BatchNorm  # noqa: E402
from nflows_edu.core import Chain  # noqa: E402


def _batchnorm(rng, dim=3):
    layer = BatchNorm(dim)
    layer.params["log_gamma"][:] = rng.standard_normal(dim)
    layer.params["beta"][:] = rng.standard_normal(dim)
    return layer


def test_batchnorm_training_backward_through_the_batch_statistics(rng):
    """In training mode every z_n depends on the whole batch, so the per-example Jacobian
    checks do not apply: check the VJP on a whole-batch loss L = sum(dz * z) + sum(dl * logdet)
    by central differences in every entry of x and every parameter."""
    layer = _batchnorm(rng)
    x = rng.standard_normal((6, 3)) * [1.0, 3.0, 0.5] + [0.0, -2.0, 4.0]
    dz, dlogdet = rng.standard_normal((6, 3)), rng.standard_normal(6)
    errors, problems = gradcheck.vjp_errors(layer, x, rng)
    assert set(errors) == {"x"} | {name for name, _, _ in layer.parameters()}
    assert max(errors.values()) <= 1e-7 and not problems, errors
    z, logdet, cache = layer.forward(x)
    layer.zero_grad()
    dx = layer.backward(dz, dlogdet, cache)
    # the batch statistics do matter: the example-wise (eval-mode) formula would be wrong here
    layer.zero_grad()
    wrong = layer.backward(dz, dlogdet, (cache[0], cache[1], False))
    assert gradcheck.rel_error(wrong, dx) > 1e-2


def test_batchnorm_modes_and_running_averages(rng):
    layer = _batchnorm(rng)
    x = rng.standard_normal((500, 3)) * 2.0 + 1.0
    z, logdet, _ = layer.forward(x)  # training: batch statistics
    xhat = (z - layer.params["beta"]) * np.exp(-layer.params["log_gamma"])
    assert np.allclose(xhat.mean(axis=0), 0, atol=1e-12)
    assert np.allclose(xhat.var(axis=0), 1, atol=1e-4)
    assert np.allclose(layer.buffers["running_mean"], 0.1 * x.mean(axis=0))
    assert np.allclose(layer.buffers["running_var"], 0.9 + 0.1 * x.var(axis=0))
    layer.eval()
    before = layer.buffers["running_mean"].copy()
    z, logdet, _ = layer.forward(x)
    assert np.array_equal(layer.buffers["running_mean"], before)  # eval: no update
    x_back, logdet_back, _ = layer.inverse(z)
    assert np.abs(x_back - x).max() <= 1e-12
    assert np.abs(logdet + logdet_back).max() <= 1e-12


def test_train_eval_propagates_and_the_flow_respects_it(rng, tmp_path):
    flow = models.maf(3, n_layers=3, hidden=(8, 8), batch_norm=True, rng=rng)
    assert sum(isinstance(layer, BatchNorm) for layer in flow.bijector.layers) == 2
    x = rng.standard_normal((64, 3)) * 3.0 + 2.0
    for _ in range(30):  # running averages towards the data's statistics
        flow.log_prob(x)
    train_lp = flow.log_prob(x[:4])  # training mode: the statistics of these 4 points
    assert flow.eval() is flow
    assert not any(m.training for m in flow.bijector.layers)
    eval_lp = flow.log_prob(x[:4])
    assert np.abs(train_lp - eval_lp).max() > 1e-3
    path = io.save(flow, tmp_path / "maf_bn")
    loaded = io.load(path).eval()
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    bn = flow.bijector.layers[1]
    assert np.array_equal(loaded.bijector.layers[1].buffers["running_var"],
                          bn.buffers["running_var"])
    z = rng.standard_normal((5, 3))
    assert np.abs(flow.bijector.forward(flow.bijector.inverse(z)[0])[0] - z).max() < 1e-10
    flow.train()
    assert all(m.training for m in flow.bijector.layers)


@pytest.mark.parametrize("name", ["maf", "iaf"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_autoregressive_models_save_and_load_exactly(name, dtype, rng, tmp_path):
    flow = models.MODELS[name](4, n_layers=3, hidden=(12, 12), rng=rng, dtype=dtype)
    for _, p, _ in flow.parameters():
        p += (0.1 * rng.standard_normal(p.shape)).astype(dtype)
    orders = [layer.made.order if name == "maf" else layer.bijector.made.order
              for layer in flow.bijector.layers]
    assert np.array_equal(orders[0], [0, 1, 2, 3]) and np.array_equal(orders[1], [3, 2, 1, 0])
    loaded = io.load(io.save(flow, tmp_path / name))
    x = rng.standard_normal((7, 4))
    assert loaded.config == flow.config
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    assert np.array_equal(loaded.sample(5, np.random.default_rng(1)),
                          flow.sample(5, np.random.default_rng(1)))
    assert loaded.log_prob(x).dtype == dtype


def test_maf_model_trains_by_maximum_likelihood(rng):
    from nflows_edu import datasets, train
    flow = models.maf(2, n_layers=2, hidden=(16, 16), rng=rng)
    data = datasets.toy("8gaussians", 2000, rng)
    before = train.nll(flow, data)
    train.fit(flow, data, steps=150, batch_size=128, lr=3e-3, rng=rng, progress=False)
    assert train.nll(flow, data) < before - 0.2
    with pytest.raises(NotImplementedError, match="sampling direction"):
        models.iaf(2, n_layers=1, hidden=(4,), rng=rng).loss_and_grad(data[:8])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_alignment_does_not_change_the_result(rng, dtype):
    # wide enough that the aligned start falls inside the layers: the columns added in front
    # of each update get exactly +0 (masked weights), so the numbers are identical
    made = MADE(20, (45, 37), "reversed", "relu", rng=rng, dtype=dtype)
    gradcheck.randomize_parameters(made, rng, 0.3)
    z = rng.standard_normal((40, 20)).astype(dtype)
    results = [kernels.maf_inverse(made, z, 3.0, align=a) for a in (1, 3, 8, 16, None)]
    for x, logdet in results[1:]:
        assert np.array_equal(x, results[0][0]) and np.array_equal(logdet, results[0][1])
    x_ref, logdet_ref = maf_inverse_reference(made, z, 3.0)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.abs(results[0][0] - x_ref).max() <= tol * np.abs(x_ref).max()
    assert np.abs(results[0][1] - logdet_ref).max() <= tol * np.abs(logdet_ref).max()
