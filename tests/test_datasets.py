"""Tests for nflows_edu.datasets (2-D toy densities)."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from nflows_edu.datasets import (TOY_NAMES, kl_from_nll, toy, toy_entropy,
                                 toy_log_prob)

CLOSED = ("8gaussians", "checkerboard")
G8_STD = 0.5 / 1.414
G8_CENTERS = 4 / 1.414 * np.array(
    [[np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)] for k in range(8)])


@pytest.fixture(scope="module")
def big():
    """200k samples of each closed-form density (shared, fixed seed)."""
    return {name: toy(name, 200_000, np.random.default_rng(1234))
            for name in CLOSED}


def midpoint_grid(lo, hi, h):
    c = np.arange(lo, hi, h) + h / 2
    g1, g2 = np.meshgrid(c, c, indexing="ij")
    return np.column_stack([g1.ravel(), g2.ravel()])


# ------------------------------------------------------------- sampling
def test_toy_names():
    assert TOY_NAMES == ("moons", "circles", "8gaussians", "checkerboard",
                         "2spirals", "pinwheel", "rings")


@pytest.mark.parametrize("name", TOY_NAMES)
@pytest.mark.parametrize("n", [1, 2, 7, 13, 1000])
def test_shape_dtype_finite(name, n):
    x = toy(name, n, np.random.default_rng(0))
    assert x.shape == (n, 2)
    assert x.dtype == np.float64
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("name", TOY_NAMES)
def test_seeded_reproducible_and_seed_dependent(name):
    a = toy(name, 501, np.random.default_rng(7))
    b = toy(name, 501, np.random.default_rng(7))
    c = toy(name, 501, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_rng_none_and_numpy_int(name):
    assert toy(name, np.int64(5)).shape == (5, 2)
    x, y = toy(name, 50), toy(name, 50)          # fresh unseeded generators
    assert not np.allclose(x, y)


def test_generator_is_advanced_not_global_state():
    state = np.random.get_state()[1].copy()
    rng = np.random.default_rng(0)
    a, b = toy("moons", 20, rng), toy("moons", 20, rng)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_rings_classes_balanced_and_shuffled():
    n = 1001
    x = toy("rings", n, np.random.default_rng(3))
    ring = np.rint(np.linalg.norm(x, axis=1) / 0.75).astype(int)  # 1..4
    np.testing.assert_array_equal(np.bincount(ring, minlength=5)[1:],
                                  [250, 250, 250, 251])
    assert set(ring[:100]) == {1, 2, 3, 4}      # rows are mixed


def test_2spirals_point_symmetric_and_balanced():
    x = toy("2spirals", 20_001, np.random.default_rng(4))
    assert abs(x.mean(axis=0)).max() < 0.05
    assert np.abs(x).max() < 4


def test_moons_mean():
    # outer moon mean (0, 2/pi), inner (1, 1/2 - 2/pi); x -> 2x + (-1, -0.2)
    x = toy("moons", 100_000, np.random.default_rng(5))
    np.testing.assert_allclose(x.mean(axis=0), [0.0, 0.3], atol=0.01)


def test_checkerboard_squares_equally_filled(big):
    x = big["checkerboard"]
    sq1, sq2 = np.floor(x / 2).astype(int).T
    assert np.all((sq1 + sq2) % 2 == 0)
    counts = np.bincount((sq1 + 2) * 4 + (sq2 + 2), minlength=16)
    black = counts[counts > 0]
    assert len(black) == 8
    np.testing.assert_allclose(black / len(x), 1 / 8, atol=0.005)


def test_8gaussians_components_equally_weighted(big):
    x = big["8gaussians"]
    d2 = ((x[:, None, :] - G8_CENTERS[None]) ** 2).sum(-1)
    frac = np.bincount(d2.argmin(1), minlength=8) / len(x)
    np.testing.assert_allclose(frac, 1 / 8, atol=0.005)


# ----------------------------------------------------- closed-form density
def test_8gaussians_log_prob_matches_scipy():
    x = np.random.default_rng(0).normal(scale=3, size=(50, 2))
    p = sum(multivariate_normal(c, G8_STD ** 2).pdf(x) for c in G8_CENTERS) / 8
    np.testing.assert_allclose(toy_log_prob("8gaussians", x), np.log(p),
                               rtol=1e-10)


def test_checkerboard_log_prob_points():
    x = np.array([[1, 1], [-1, 1], [3, 3], [-3, -3], [3, -3], [5, 0],
                  [0.5, 3.9], [-4, -4], [4, 4]], dtype=float)
    inside = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    lp = toy_log_prob("checkerboard", x)
    np.testing.assert_allclose(lp[inside], np.log(1 / 32))
    assert np.all(lp[~inside] == -np.inf)


@pytest.mark.parametrize("name,lo,hi,h", [("8gaussians", -6, 6, 0.03),
                                          ("checkerboard", -5, 5, 0.05)])
def test_density_integrates_to_one(name, lo, hi, h):
    x = midpoint_grid(lo, hi, h)
    total = np.exp(toy_log_prob(name, x)).sum() * h * h
    assert abs(total - 1) < 1e-3


@pytest.mark.parametrize("name", CLOSED)
def test_samples_have_finite_log_prob(name, big):
    assert np.all(np.isfinite(toy_log_prob(name, big[name])))


@pytest.mark.parametrize("name", CLOSED)
def test_entropy_matches_monte_carlo(name, big):
    mc = -toy_log_prob(name, big[name]).mean()
    assert abs(mc - toy_entropy(name)) < 0.01


def test_entropy_values():
    assert toy_entropy("checkerboard") == pytest.approx(np.log(32), abs=1e-15)
    # independent check of the Gauss-Hermite value by a fine midpoint grid
    x = midpoint_grid(-6, 6, 0.02)
    lp = toy_log_prob("8gaussians", x)
    grid = -(np.exp(lp) * lp).sum() * 0.02 ** 2
    h = toy_entropy("8gaussians")
    assert h == pytest.approx(grid, abs=1e-6)
    no_overlap = np.log(8) + np.log(2 * np.pi * np.e * G8_STD ** 2)
    assert no_overlap - 0.01 < h < no_overlap      # overlap lowers H
    assert toy_entropy("8gaussians") == h          # cached, same value


def test_sample_moments(big):
    s2 = G8_STD ** 2 + (4 / 1.414) ** 2 / 2
    x = big["8gaussians"]
    np.testing.assert_allclose(x.mean(0), 0, atol=0.02)
    np.testing.assert_allclose(np.cov(x.T), s2 * np.eye(2), atol=0.05)
    # checkerboard: uniform marginals on [-4, 4]; square centres correlate
    x = big["checkerboard"]
    np.testing.assert_allclose(x.mean(0), 0, atol=0.02)
    np.testing.assert_allclose(np.cov(x.T), [[16 / 3, 1], [1, 16 / 3]],
                               atol=0.06)


def test_kl_from_nll():
    for name in CLOSED:
        assert kl_from_nll(name, toy_entropy(name)) == 0.0
    # q = uniform on [-4, 4]^2 has NLL log 64 under p: KL = log 2 exactly
    assert kl_from_nll("checkerboard", np.log(64)) == pytest.approx(np.log(2))


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("func,args", [
    (toy, ("swissroll", 10)), (toy_log_prob, ("8 gaussians", np.zeros((1, 2)))),
    (toy_entropy, ("Moons",)), (kl_from_nll, ("spiral", 1.0))])
def test_unknown_name(func, args):
    with pytest.raises(ValueError, match=func.__name__) as err:
        func(*args)
    msg = str(err.value)
    assert all(name in msg for name in TOY_NAMES)


@pytest.mark.parametrize("func,args", [
    (toy_log_prob, ("moons", np.zeros((1, 2)))), (toy_entropy, ("rings",)),
    (kl_from_nll, ("pinwheel", 1.0))])
def test_no_closed_form(func, args):
    with pytest.raises(ValueError, match="closed-form") as err:
        func(*args)
    msg = str(err.value)
    assert func.__name__ in msg and "8gaussians" in msg and "checkerboard" in msg


@pytest.mark.parametrize("n", [0, -3, 2.0, 2.5, True, "10", None])
def test_bad_n(n):
    with pytest.raises(ValueError, match="toy expected n to be a positive int"):
        toy("moons", n, np.random.default_rng(0))


def test_bad_rng():
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        toy("moons", 5, np.random.RandomState(0))


@pytest.mark.parametrize("x", [np.zeros((4, 3)), np.zeros(2), np.zeros((2, 2, 2)),
                               [[0.0, np.nan]], [[np.inf, 0.0]], "abc",
                               [[1.0, 2.0], [3.0]]])
def test_bad_x(x):
    with pytest.raises(ValueError, match=r"toy_log_prob expected x of shape "
                                         r"\(N, 2\) with finite values, got"):
        toy_log_prob("8gaussians", x)
