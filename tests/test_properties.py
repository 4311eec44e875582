"""Property-based round trips: any binary mask, any size, any parameter scale."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nflows_edu import gradcheck, models
from nflows_edu.bijectors import AdditiveCoupling, AffineCoupling


@st.composite
def coupling_cases(draw):
    dim = draw(st.integers(2, 8))
    mask = np.array(draw(st.lists(st.integers(0, 1), min_size=dim, max_size=dim)))
    if mask.all() or not mask.any():
        mask[draw(st.integers(0, dim - 1))] ^= 1
    # scales away from 0: a zero-initialised coupling moved by 0 is the identity, whose round
    # trip proves nothing
    return mask, draw(st.integers(0, 2**32 - 1)), draw(st.floats(0.1, 2.0))


@settings(max_examples=60, deadline=None)
@given(coupling_cases(), st.sampled_from([AdditiveCoupling, AffineCoupling]))
def test_coupling_round_trip_for_any_mask(case, cls):
    mask, seed, scale = case
    rng = np.random.default_rng(seed)
    layer = gradcheck.randomize_parameters(cls(mask, (16,), rng=rng), rng, scale)
    x = 3 * rng.standard_normal((5, mask.size))
    z, ld, _ = layer.forward(x)
    x_back, ld_inv, _ = layer.inverse(z)
    assert np.abs(z - x).max() > 1e-3  # not the identity
    assert np.abs(x_back - x).max() <= 1e-10 * max(1.0, np.abs(x).max(), np.abs(z).max())
    assert np.abs(ld + ld_inv).max() <= 1e-12
    np.testing.assert_array_equal(z[:, mask == 1], x[:, mask == 1])


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_sampling_inverts_inference(dim, seed):
    rng = np.random.default_rng(seed)
    flow = gradcheck.randomize_parameters(models.realnvp(dim, n_layers=4, hidden=(16,), rng=rng),
                                          rng, 0.1)
    x = flow.sample(10, rng)
    z, _, _ = flow.bijector.forward(x)
    x_again, _, _ = flow.bijector.inverse(z)
    np.testing.assert_allclose(x_again, x, atol=1e-10)
