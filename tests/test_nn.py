"""nn modules: backward against central differences for the input and every parameter."""
import numpy as np
import pytest

from nflows_edu import gradcheck
from nflows_edu.nn import MLP, LeakyReLU, Linear, ReLU, Tanh, make_activation


def _modules(rng):
    n_in, n_out = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    act = ["relu", "leaky_relu", "tanh"][int(rng.integers(3))]
    return {
        "Linear": (Linear(n_in, n_out, rng), n_in),
        "ReLU": (ReLU(), n_in),
        "LeakyReLU": (LeakyReLU(0.1), n_in),
        "Tanh": (Tanh(), n_in),
        "MLP": (MLP((n_in, 7, 5, n_out), activation=act, rng=rng), n_in),
    }


@pytest.mark.parametrize("draw", range(20))
@pytest.mark.parametrize("name", ["Linear", "ReLU", "LeakyReLU", "Tanh", "MLP"])
def test_module_backward_matches_central_differences(name, draw):
    rng = np.random.default_rng(draw)
    module, n_in = _modules(rng)[name]
    gradcheck.randomize_parameters(module, rng, float(rng.uniform(0.1, 1.0)))
    x = rng.standard_normal((int(rng.integers(1, 6)), n_in))
    errors = gradcheck.check_module(module, x, rng)
    assert set(errors) == {"x"} | {n for n, _, _ in module.parameters()}
    assert max(errors.values()) <= 1e-6, errors


def test_checker_flags_a_broken_module(rng):
    class BrokenLinear(Linear):
        def backward(self, dy, cache):
            dx = super().backward(dy, cache)
            self.grads["b"] += dy.sum(axis=0)  # wrong bias gradient: counted twice
            return dx

    errors = gradcheck.check_module(BrokenLinear(3, 2, rng), rng.standard_normal((4, 3)), rng)
    assert errors["x"] <= 1e-6 and errors["W"] <= 1e-6
    assert errors["b"] > 0.1


@pytest.mark.parametrize("fault", ["rebinds", "overwrites"])
def test_checker_flags_module_gradient_bookkeeping(fault, rng):
    class Sloppy(Linear):
        def backward(self, dy, cache):
            if fault == "rebinds":
                self.grads["W"] = cache.T @ dy
            else:
                self.grads["W"][...] = cache.T @ dy
            self.grads["b"] += dy.sum(axis=0)
            return dy @ self.params["W"].T

    with pytest.raises(AssertionError, match=fault):
        gradcheck.check_module(Sloppy(3, 2, rng), rng.standard_normal((4, 3)), rng)


def test_backward_accumulates_into_grads(rng):
    layer = Linear(3, 2, rng)
    x = rng.standard_normal((4, 3))
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    layer.backward(dy, cache)
    once = layer.grads["W"].copy()
    layer.backward(dy, cache)
    np.testing.assert_allclose(layer.grads["W"], 2 * once)
    layer.zero_grad()
    assert not layer.grads["W"].any()


def test_zero_last_starts_at_zero_output(rng):
    net = MLP((2, 16, 16, 4), zero_last=True, rng=rng)
    y, _ = net.forward(rng.standard_normal((5, 2)))
    assert not y.any()
    assert [n for n, _, _ in net.parameters()] == [
        "layers.0.W", "layers.0.b", "layers.2.W", "layers.2.b", "layers.4.W", "layers.4.b"]


def test_relu_values():
    y, cache = ReLU().forward(np.array([[-1.0, 0.0, 2.0]]))
    np.testing.assert_array_equal(y, [[0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(ReLU().backward(np.ones((1, 3)), cache), [[0.0, 0.0, 1.0]])


def test_mlp_rejects_bad_input(rng):
    net = MLP((3, 4, 2), rng=rng)
    with pytest.raises(ValueError, match=r"MLP.*\(N, 3\)"):
        net.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        net.forward(np.array([[0.0, np.inf, 1.0]]))
    with pytest.raises(ValueError, match="make_activation"):
        make_activation("sigmoid")


def test_mlp_made_and_convnet_share_sequential(rng):
    from nflows_edu.nn import MADE, ConvNet, MLP, Sequential, Tanh
    assert all(issubclass(c, Sequential) for c in (MLP, MADE, ConvNet))
    net = Sequential([Linear(3, 4, rng), Tanh(), Linear(4, 2, rng)])
    errors = gradcheck.check_module(net, rng.standard_normal((5, 3)), rng)
    assert max(errors.values()) < 1e-7 and set(errors) == {"x", "layers.0.W", "layers.0.b",
                                                           "layers.2.W", "layers.2.b"}
