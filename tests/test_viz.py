"""Tests for nflows_edu.viz: the density grid integrates to 1 and every picture gets drawn."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nflows_edu import datasets, models, train, viz  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def flow(rng):
    """A small RealNVP moved off its identity initialisation, so the pictures are not trivial."""
    f = models.realnvp(2, n_layers=3, hidden=(8,), rng=rng)
    for _, p, _ in f.parameters():
        p += 0.3 * rng.standard_normal(p.shape)
    return f


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_density_grid_shape_and_values(flow):
    X, Y, P = viz.density_grid(flow, lim=3.0, n=37)
    assert X.shape == Y.shape == P.shape == (37, 37)
    assert X[0, 0] == -3.0 and X[0, -1] == 3.0 and Y[-1, 0] == 3.0
    # P[i, j] is the density at (X[i, j], Y[i, j]), not at the transposed point.
    i, j = 5, 30
    expected = np.exp(flow.log_prob(np.array([[X[i, j], Y[i, j]]])))[0]
    assert P[i, j] == pytest.approx(expected, rel=1e-12)
    assert np.all(P > 0)


def test_grid_integral_of_untrained_realnvp_is_one(rng):
    flow = models.realnvp(2, rng=rng)  # zero-initialised nets: identity map + N(0, I)
    assert viz.grid_integral(flow, lim=6.0, n=200) == pytest.approx(1.0, abs=1e-2)


def test_grid_integral_sees_missing_mass(rng):
    # Over [-1, 1]^2 a standard normal has mass (erf(1/sqrt 2))^2 = 0.466, not 1.
    flow = models.realnvp(2, rng=rng)
    assert viz.grid_integral(flow, lim=1.0, n=401) == pytest.approx(0.6827 ** 2, abs=5e-3)


def test_grid_integral_of_a_trained_flow_is_one(flow):
    assert viz.grid_integral(flow, lim=8.0, n=300) == pytest.approx(1.0, abs=2e-2)


def test_plot_density_returns_axes(flow):
    ax = viz.plot_density(flow, lim=3.0, n=20, title="p")
    assert isinstance(ax, Axes) and ax.get_title() == "p"
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (20, 20)
    _, given = plt.subplots()
    assert viz.plot_density(flow, ax=given, n=10) is given


def test_plot_samples_returns_axes(flow, rng):
    data = datasets.toy("moons", 300, rng)
    ax = viz.plot_samples(flow.sample(200, rng), data=data)
    assert isinstance(ax, Axes)
    scatters = [c for c in ax.collections if hasattr(c, "get_offsets") and
                len(c.get_offsets()) > 1]
    assert [len(c.get_offsets()) for c in scatters] == [200]  # the data is contour lines
    assert any("contour" in type(c).__name__.lower() or c not in scatters
               for c in ax.collections)
    ax = viz.plot_samples(flow.sample(50, rng), lim=None)
    assert [len(c.get_offsets()) for c in ax.collections] == [50]


def test_plot_warp_has_a_panel_per_layer(flow, rng):
    x = datasets.toy("8gaussians", 100, rng)
    fig = viz.plot_warp(flow, x, n_lines=5)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(flow.bijector.layers) + 1
    # The last panel shows z = f(x); every panel has the same limits.
    z, _, _ = flow.bijector.forward(x)
    shown = panels[-1].collections[0].get_offsets()
    np.testing.assert_allclose(shown, z, rtol=1e-12)
    assert len({ax.get_xlim() for ax in panels}) == 1
    assert "base density" in panels[-1].get_title()
    assert "given" in panels[1].get_title()  # a coupling says which coordinate it changes


def test_plot_loss_returns_axes(rng):
    flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=rng)
    data = datasets.toy("moons", 500, rng)
    history = train.fit(flow, data, steps=30, batch_size=64, rng=rng, val_data=data[:100],
                        eval_every=10, progress=False)
    ax = viz.plot_loss(history)
    assert isinstance(ax, Axes)
    assert len(ax.lines) == 3  # minibatch loss, train NLL, validation NLL
    ax = viz.plot_loss(history, entropy=0.5)
    assert len(ax.lines) == 4 and ax.get_ylim()[0] < 0.5


def test_density_comparison_shares_one_colour_scale(flow):
    fig = viz.plot_density_comparison(flow, "checkerboard", lim=4.0, n=30)
    left, right = [ax for ax in fig.axes if ax.images]
    assert left.images[0].get_clim() == right.images[0].get_clim()
    assert "true density" in left.get_title()


def test_save_pictures_writes_pngs(flow, rng, tmp_path):
    out = tmp_path / "new" / "pictures"
    data = datasets.toy("checkerboard", 3000, rng)
    n_open = len(plt.get_fignums())
    paths = viz.save_pictures(flow, data, out, rng=rng)
    assert set(paths) == {"density", "samples", "warp"}
    for name, path in paths.items():
        with open(path, "rb") as f:
            head = f.read(8)
        assert head == PNG_MAGIC, name
        assert path.endswith(f"{name}.png")
    assert len(plt.get_fignums()) == n_open  # every figure it opened is closed
