"""Digits data, the preprocessing bijectors and bits per dimension."""
import numpy as np
import pytest

from nflows_edu import datasets, io, models
from nflows_edu.bijectors import Logit, ScaleToUnit, dequantize
from nflows_edu.core import Chain, Flow
from nflows_edu.distributions import StandardLogistic


def test_digits_split_is_fixed_and_disjoint():
    x, y = datasets.digits("all", labels=True)
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert x.min() == 0 and x.max() == 16 and np.array_equal(x, np.round(x))
    assert np.array_equal(np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    parts = [datasets.digits(s) for s in ("train", "validation", "test")]
    assert [len(p) for p in parts] == [1257, 270, 270]
    rows = {tuple(r) for r in x}
    assert sum(len({tuple(r) for r in p}) for p in parts) >= len(rows) - 5  # disjoint splits
    assert np.array_equal(np.sort(np.concatenate(parts), axis=0), np.sort(x, axis=0))
    with pytest.raises(ValueError, match="split"):
        datasets.digits("training")


def test_uniform_model_scores_exactly_log2_17(rng):
    """The logit of a uniform variable is standard logistic, so this flow is the uniform
    density 17^-64 on [0, 17)^64: bits/dim must be log2(17) for every point."""
    uniform = Flow(Chain([ScaleToUnit(64, 17), Logit(64, alpha=0.0)]), StandardLogistic(64))
    v = dequantize(datasets.digits("test"), rng)
    log_p = uniform.log_prob(v)
    assert np.abs(log_p + 64 * np.log(17)).max() <= 1e-9
    assert abs(datasets.bits_per_dim(-log_p.mean(), 64) - np.log2(17)) <= 1e-12
    assert datasets.bits_per_dim(64 * np.log(17), 64) == pytest.approx(4.08746284125034, abs=1e-12)


def test_dequantize_range_and_bad_pixels(rng):
    x = datasets.digits("validation")
    v = dequantize(x, rng)
    assert (v >= x).all() and (v < x + 1).all()
    for bad in (17, -1, 3.5, np.nan):
        pixels = x[:2].copy()
        pixels[0, 5] = bad
        with pytest.raises(ValueError, match="integer pixels in 0..16"):
            dequantize(pixels, rng)


def test_preprocessing_domain_errors(rng):
    with pytest.raises(ValueError, match=r"dequantised pixels in \[0, 17\]"):
        ScaleToUnit(3).forward(np.array([[1.0, 17.5, 2.0]]))
    for bad in (0.0, 1.0, -0.2, 1.3):
        with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
            Logit(3).forward(np.array([[0.5, bad, 0.5]]))
    with pytest.raises(ValueError, match="alpha"):
        Logit(3, alpha=0.5)


def test_logit_matches_realnvp_formula(rng):
    x = rng.uniform(0.01, 0.99, (4, 3))
    z, logdet, _ = Logit(3, alpha=0.05).forward(x)
    y = 0.05 + 0.9 * x
    assert np.allclose(z, np.log(y / (1 - y)), atol=1e-14)
    assert np.allclose(logdet, np.sum(np.log(0.9 / (y * (1 - y))), axis=1), atol=1e-12)
    x_back, logdet_back, _ = Logit(3, alpha=0.05).inverse(z)
    assert np.abs(x_back - x).max() <= 1e-13 and np.abs(logdet + logdet_back).max() <= 1e-12


@pytest.mark.parametrize("name", ["maf", "nsf"])
def test_pixel_model_saves_and_loads(name, rng, tmp_path):
    flow = models.MODELS[name](64, n_layers=2, hidden=(64,), pixel_levels=17, rng=rng)
    for _, p, _ in flow.parameters():
        p += 0.01 * rng.standard_normal(p.shape)
    v = dequantize(datasets.digits("test")[:10], rng)
    loaded = io.load(io.save(flow, tmp_path / f"digits_{name}"))
    assert np.array_equal(loaded.log_prob(v), flow.log_prob(v))
    assert flow.sample(4, rng).shape == (4, 64)
