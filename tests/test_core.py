"""Module bookkeeping and the Bijector base class."""
import numpy as np
import pytest

from nflows_edu.bijectors import AffineCoupling, Permutation, Scaling
from nflows_edu.core import Bijector, Chain, Inverse, Module, check_array
from nflows_edu.nn import Linear


class TwoLinears(Module):
    def __init__(self, rng):
        super().__init__()
        self.add_param("scale", np.ones(3))
        self.first = Linear(3, 2, rng)
        self.rest = [Linear(2, 2, rng), "not a module"]


def test_parameters_walk_the_tree_with_qualified_names(rng):
    m = TwoLinears(rng)
    names = [n for n, _, _ in m.parameters()]
    assert names == ["scale", "first.W", "first.b", "rest.0.W", "rest.0.b"]
    assert m.num_params() == 3 + 6 + 2 + 4 + 2
    for name, p, g in m.parameters():
        assert p.shape == g.shape
        g += 1.0
    m.zero_grad()
    assert all(not g.any() for _, _, g in m.parameters())


def test_state_dict_round_trip_and_errors(rng):
    a, b = TwoLinears(rng), TwoLinears(rng)
    b.load_state_dict(a.state_dict())
    for (_, pa, _), (_, pb, _) in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb)
    state = a.state_dict()
    state["first.W"][...] = 7.0  # a copy: the module is untouched
    assert not (a.params["scale"] == 7.0).all() and not (a.first.params["W"] == 7).all()
    del state["scale"]
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict(state)


def test_buffers_are_saved_but_not_trained(rng):
    chain = Chain([Permutation(4, rng=rng), Scaling(4)])
    assert [n for n, _ in chain.named_buffers()] == ["layers.0.perm"]
    assert [n for n, _, _ in chain.parameters()] == ["layers.1.log_s"]
    assert set(chain.state_dict()) == {"layers.0.perm", "layers.1.log_s"}


def test_bijector_base_class_says_what_is_missing():
    class Half(Bijector):
        dim = 2

        def forward(self, x):
            return x, np.zeros(len(x)), None

    b = Half()
    with pytest.raises(NotImplementedError):
        b.inverse(np.zeros((1, 2)))
    with pytest.raises(NotImplementedError):
        b.backward(np.zeros((1, 2)), np.zeros(1), None)
    with pytest.raises(ValueError, match=r"Half: expected an array of shape \(N, 2\)"):
        b._check(np.zeros((1, 3)))


def test_inverse_of_inverse_is_the_layer(rng):
    layer = AffineCoupling([1, 0, 0], (4,), rng=rng, zero_init=False)
    x = rng.standard_normal((3, 3))
    z1, ld1, _ = layer.forward(x)
    z2, ld2, _ = Inverse(Inverse(layer)).forward(x)
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_array_equal(ld1, ld2)


def test_check_array_casts_integers_and_rejects_the_rest():
    assert check_array([[1, 2]], "f", 2).dtype == np.float64
    with pytest.raises(ValueError, match=r"f: expected an array of shape \(N, D\)"):
        check_array(np.zeros((2, 2, 2)), "f")
    with pytest.raises(ValueError, match="Chain: expected at least one layer"):
        Chain([])


def test_import_is_light():
    """Importing the library changes nothing in the process: no scipy (slow to import), no
    large allocation (the malloc trick lives in fast.py and runs only when fit trains)."""
    import subprocess
    import sys
    code = ("import tracemalloc, sys; tracemalloc.start(); import nflows_edu; "
            "now, peak = tracemalloc.get_traced_memory(); print(peak - now); "
            "print('scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    transient, scipy_loaded = int(out[0]), out[1] == "True"
    assert not scipy_loaded
    # what was allocated and freed again (the old import-time trick: 16 MiB)
    assert transient < 2 << 20, f"import allocated and freed {transient / 2**20:.1f} MiB"
