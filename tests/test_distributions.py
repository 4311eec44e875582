"""Base distributions: log_prob against scipy, gradients against central differences,
samples against the density."""
import numpy as np
import pytest
from scipy import stats

from nflows_edu import gradcheck
from nflows_edu.distributions import (DiagonalGaussian, Distribution, StandardLogistic,
                                      StandardNormal)


def test_log_prob_matches_scipy(rng):
    z = rng.standard_normal((7, 3)) * 2
    np.testing.assert_allclose(StandardNormal(3).log_prob(z), stats.norm.logpdf(z).sum(1))
    np.testing.assert_allclose(StandardLogistic(3).log_prob(z), stats.logistic.logpdf(z).sum(1))
    g = DiagonalGaussian(3)
    g.params["mu"][:] = [0.5, -1.0, 2.0]
    g.params["log_sigma"][:] = [0.1, -0.3, 0.7]
    expected = stats.norm.logpdf(z, g.params["mu"], np.exp(g.params["log_sigma"])).sum(1)
    np.testing.assert_allclose(g.log_prob(z), expected)


def test_logistic_is_stable_far_out():
    z = np.array([[800.0, -800.0]])
    assert np.isfinite(StandardLogistic(2).log_prob(z)).all()
    np.testing.assert_allclose(StandardLogistic(2).log_prob(z), [-1600.0])


@pytest.mark.parametrize("draw", range(5))
@pytest.mark.parametrize("cls", [StandardNormal, StandardLogistic, DiagonalGaussian])
def test_backward_matches_central_differences(cls, draw):
    rng = np.random.default_rng(draw)
    dist = gradcheck.randomize_parameters(cls(int(rng.integers(1, 5))), rng, 0.5)
    z = rng.standard_normal((4, dist.dim))
    dlogp = rng.standard_normal(4)
    dist.zero_grad()
    dz = dist.backward(dlogp, z)
    analytic = {n: g.copy() for n, _, g in dist.parameters()}
    loss = lambda: float(dlogp @ dist.log_prob(z))  # noqa: E731
    assert gradcheck.rel_error(dz, gradcheck.numerical_gradient(loss, z)) < 1e-7
    for name, p, _ in dist.parameters():
        assert gradcheck.rel_error(analytic[name], gradcheck.numerical_gradient(loss, p)) < 1e-7
    grad = dist.grad_log_prob(z)
    assert gradcheck.rel_error(grad, gradcheck.numerical_gradient(
        lambda: dist.log_prob(z).sum(), z)) < 1e-7


@pytest.mark.parametrize("cls, ref", [(StandardNormal, stats.norm), (StandardLogistic, stats.logistic)])
def test_samples_follow_the_density(cls, ref, rng):
    z = cls(2).sample(20000, rng)
    assert z.shape == (20000, 2)
    assert stats.kstest(z[:, 0], ref.cdf).pvalue > 1e-3
    assert stats.kstest(z[:, 1], ref.cdf).pvalue > 1e-3


def test_sampling_is_reproducible_and_typed():
    a = StandardNormal(2, dtype=np.float32).sample(5, np.random.default_rng(3))
    b = StandardNormal(2, dtype=np.float32).sample(5, np.random.default_rng(3))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_bad_input():
    with pytest.raises(ValueError, match=r"StandardNormal.*\(N, 2\)"):
        StandardNormal(2).log_prob(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        StandardLogistic(1).log_prob(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="positive dim"):
        StandardNormal(0)


def test_every_distribution_shares_the_base_class():
    for cls in (StandardNormal, StandardLogistic, DiagonalGaussian):
        assert issubclass(cls, Distribution)
        assert cls(2).backward(np.ones(3), np.zeros((3, 2))).shape == (3, 2)
