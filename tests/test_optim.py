"""Optimizers against the textbook update rules, and gradient clipping."""
import numpy as np
import pytest

from nflows_edu import fast, models
from nflows_edu.nn import Linear
from nflows_edu.optim import SGD, Adam, clip_grad_norm


def test_adam_matches_the_textbook_update(rng):
    layer = Linear(3, 2, rng)
    opt = Adam(list(layer.parameters()), lr=0.01, betas=(0.8, 0.95), eps=1e-6)
    p0 = {n: p.copy() for n, p, _ in layer.parameters()}
    m = {n: np.zeros_like(p) for n, p in p0.items()}
    v = {n: np.zeros_like(p) for n, p in p0.items()}
    for t in range(1, 6):
        for name, p, g in layer.parameters():
            g[...] = rng.standard_normal(g.shape)
            m[name] = 0.8 * m[name] + 0.2 * g
            v[name] = 0.95 * v[name] + 0.05 * g**2
            m_hat, v_hat = m[name] / (1 - 0.8**t), v[name] / (1 - 0.95**t)
            p0[name] = p0[name] - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-6)
        opt.step()
        for name, p, _ in layer.parameters():
            np.testing.assert_allclose(p, p0[name], rtol=1e-12, atol=1e-15)


def test_sgd_momentum(rng):
    layer = Linear(2, 2, rng)
    opt = SGD(list(layer.parameters()), lr=0.1, momentum=0.5)
    W0 = layer.params["W"].copy()
    layer.grads["W"][...] = 1.0
    opt.step()
    opt.step()
    # v1 = 1, v2 = 0.5 + 1 = 1.5; total step 0.1 * (1 + 1.5)
    np.testing.assert_allclose(layer.params["W"], W0 - 0.25)


def test_clip_grad_norm(rng):
    layer = Linear(4, 3, rng)
    for _, _, g in layer.parameters():
        g[...] = rng.standard_normal(g.shape)
    params = list(layer.parameters())
    norm = np.sqrt(sum((g**2).sum() for _, _, g in params))
    assert np.isclose(clip_grad_norm(params, None), norm)
    assert np.isclose(clip_grad_norm(params, norm / 2), norm)
    assert np.isclose(np.sqrt(sum((g**2).sum() for _, _, g in params)), norm / 2)
    layer.grads["b"][0] = np.nan
    assert not np.isfinite(clip_grad_norm(params, 1.0))


def test_adam_minimises_a_quadratic(rng):
    layer = Linear(3, 1, rng)
    x = rng.standard_normal((64, 3))
    y_true = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3
    opt = Adam(list(layer.parameters()), lr=0.05)
    for _ in range(500):
        layer.zero_grad()
        y, cache = layer.forward(x)
        layer.backward(2 * (y - y_true) / len(x), cache)
        opt.step()
    np.testing.assert_allclose(layer.params["W"].ravel(), [1.0, -2.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(layer.params["b"], [0.3], atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_adam_computes_the_textbook_update(dtype, rng, monkeypatch):
    """The fast path train.fit uses: blocks for large arrays, one gathered vector for the
    small ones; the same numbers as optim.Adam to round-off."""
    flows = [models.realnvp(8, n_layers=2, hidden=(300, 8), dtype=dtype,
                            rng=np.random.default_rng(0)) for _ in range(2)]
    monkeypatch.setattr(fast.FusedAdam, "block_bytes", 4096)  # several blocks per array
    opts = [Adam(list(flows[0].parameters()), lr=0.01),
            fast.FusedAdam(list(flows[1].parameters()), lr=0.01)]
    for _ in range(5):
        grads = [rng.standard_normal(g.shape) for _, _, g in flows[0].parameters()]
        for flow, opt in zip(flows, opts):
            for (_, _, g), new in zip(flow.parameters(), grads):
                g[...] = new
            opt.step()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for (name, a, _), (_, b, _) in zip(flows[0].parameters(), flows[1].parameters()):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=name)
