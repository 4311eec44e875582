"""Multi-scale image flows: Split, Glow's coupling, MultiScale, and the glow / realnvp_image
models as whole bijectors (round trip, log-det, VJPs), data-dependent initialisation, save and
load, temperature sampling and bad input."""
import numpy as np
import pytest

from nflows_edu import gradcheck, io, models, train
from nflows_edu.bijectors import (ActNorm, GlowCoupling, MultiScale, Split, Squeeze,
                                  glow_levels)
from nflows_edu.core import Chain


def _moved(flow, rng, scale=0.1):
    return gradcheck.randomize_parameters(flow, rng, scale)


@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 4, 4)])
@pytest.mark.parametrize("name", ["glow", "realnvp_image"])
def test_whole_model_passes_the_checks(name, shape, rng):
    kwargs = dict(depth=1, hidden=3) if name == "glow" else dict(hidden=3, n_blocks=1)
    flow = _moved(models.MODELS[name](shape, 2, activation="tanh", rng=rng, **kwargs), rng)
    x = rng.standard_normal((2, int(np.prod(shape))))
    report = gradcheck.check_bijector(flow.bijector, x, rng, entries=2)
    assert report.roundtrip <= 1e-10, report
    assert report.logdet <= 1e-7 and report.logdet_cancel <= 1e-7, report
    assert report.max_grad_error <= 1e-6 and not report.problems, report


def test_factored_out_half_travels_in_z(rng):
    """The first part of z is the second half of the channels after level 1's Split."""
    shape = (1, 4, 4)
    levels = glow_levels(shape, 2, 1, 3, "tanh", rng)
    ms = _moved(MultiScale(shape, levels), rng)
    x = rng.standard_normal((3, 16))
    z, _, _ = ms.forward(x)
    h, _, _ = levels[0].forward(x.reshape(3, *shape))  # (3, 4, 2, 2) after the Split
    assert np.array_equal(z[:, :8], h[:, 2:].reshape(3, -1))
    assert ms.shapes == [(4, 2, 2), (8, 1, 1)]


def test_glow_coupling_starts_at_glow_scale(rng):
    layer = GlowCoupling(4, hidden=8, rng=rng)
    x = rng.standard_normal((2, 4, 3, 3))
    z, logdet, _ = layer.forward(x)
    s = -np.log1p(np.exp(-2.0))  # log sigmoid(2)
    assert np.allclose(z[:, :2], x[:, :2]) and np.allclose(z[:, 2:], x[:, 2:] * np.exp(s))
    assert np.allclose(logdet, 2 * 9 * s)


def test_split_starts_as_identity(rng):
    x = rng.standard_normal((2, 4, 2, 2))
    z, logdet, _ = Split(4, rng=rng).forward(x)
    assert np.array_equal(z, x) and np.array_equal(logdet, np.zeros(2))


def test_data_init_normalises_every_actnorm_input(rng):
    flow = models.glow((1, 8, 8), 2, 2, 8, rng=rng)
    x = rng.uniform(0, 3, (256, 64))
    assert train.needs_data_init(flow)
    flow.data_init(x)
    assert not train.needs_data_init(flow)
    # the first ActNorm's output is standardised per channel on that batch
    first = flow.bijector.layers[0].levels[0].layers
    h = first[0].forward(x.reshape(-1, 1, 8, 8))[0]
    out = first[1].forward(h)[0]
    assert np.allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-10)
    assert np.allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_fit_initialises_actnorm_and_a_loaded_model_is_not_reinitialised(tmp_path, rng):
    flow = models.glow((1, 4, 4), 2, 1, 4, pixel_levels=17, rng=rng)
    x = rng.uniform(0, 17, (256, 16))
    train.fit(flow, x, steps=3, batch_size=32, lr=1e-3, rng=rng, progress=False)
    actnorms = [m for m in flow.modules() if isinstance(m, ActNorm)]
    assert actnorms and all(m.buffers["initialized"] == 1 for m in actnorms)
    path = io.save(flow, tmp_path / "glow")
    loaded = io.load(path)
    assert np.array_equal(loaded.log_prob(x[:8]), flow.log_prob(x[:8]))
    assert not train.needs_data_init(loaded)
    before = loaded.state_dict()
    loaded.data_init(x)  # an initialised ActNorm keeps its trained parameters
    assert all(np.array_equal(before[k], v) for k, v in loaded.state_dict().items())


def test_realnvp_image_saves_and_loads(tmp_path, rng):
    flow = _moved(models.realnvp_image((1, 4, 4), 2, hidden=4, n_blocks=1, rng=rng,
                                       dtype=np.float32), rng)
    loaded = io.load(io.save(flow, tmp_path / "rnvp"))
    x = rng.standard_normal((5, 16))
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    assert loaded.config == flow.config and loaded.dtype == np.float32


def test_temperature_scales_the_noise(rng):
    flow = _moved(models.glow((1, 4, 4), 2, 1, 4, rng=rng), rng)
    x = flow.sample(6, np.random.default_rng(3), temperature=0.5)
    z = 0.5 * flow.base.sample(6, np.random.default_rng(3))
    assert np.allclose(x, flow.bijector.inverse(z)[0], atol=1e-12)
    for bad in (0, -1.0, np.nan, "hot"):
        with pytest.raises(ValueError, match="temperature"):
            flow.sample(2, rng, temperature=bad)


def test_bad_shapes_are_refused(rng):
    with pytest.raises(ValueError, match="multiples of 4"):
        models.glow((1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="shape"):
        models.realnvp_image((8, 8))
    with pytest.raises(ValueError, match="at least 2"):
        MultiScale((1, 2, 2), [ActNorm(1), Chain([Squeeze(1)])])
    ms = MultiScale((1, 4, 4), glow_levels((1, 4, 4), 2, 1, 3, rng=rng))
    with pytest.raises(ValueError, match="shape"):
        ms.forward(rng.standard_normal((2, 15)))
    with pytest.raises(ValueError, match="finite"):
        ms.inverse(np.full((2, 16), np.nan))
    with pytest.raises(ValueError, match="2 channels"):
        GlowCoupling(1)


# ----------------------------------------------------------------- Glow with spline couplings
from nflows_edu.bijectors import ImageSplineCoupling  # noqa: E402


def test_glow_coupling_option_chooses_the_coupling_layer(rng):
    couplings = {name: [type(m) for m in models.glow((1, 4, 4), 2, 2, 4, coupling=name,
                                                      rng=rng).modules()
                        if isinstance(m, (GlowCoupling, ImageSplineCoupling))]
                 for name in ("affine", "spline")}
    assert couplings["affine"] == [GlowCoupling] * 4  # the default, as before
    assert couplings["spline"] == [ImageSplineCoupling] * 4
    assert models.glow((1, 4, 4), rng=rng).config["coupling"] == "affine"
    with pytest.raises(ValueError, match="coupling"):
        models.glow((1, 4, 4), coupling="cubic")
    with pytest.raises(ValueError, match="ImageSplineCoupling.*n_bins"):
        models.glow((1, 4, 4), coupling="spline", n_bins=1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_spline_glow_saves_and_loads_exactly(dtype, tmp_path, rng):
    flow = models.glow((1, 4, 4), 2, 1, 4, coupling="spline", n_bins=5, bound=3.0,
                       pixel_levels=17, rng=rng, dtype=dtype)
    x = rng.uniform(0, 17, (64, 16))
    flow.data_init(x)
    _moved(flow, rng, 0.05)
    loaded = io.load(io.save(flow, tmp_path / "glow_spline"))
    assert loaded.config == flow.config and loaded.config["coupling"] == "spline"
    splines = [m for m in loaded.modules() if isinstance(m, ImageSplineCoupling)]
    assert splines and all(m.n_bins == 5 and m.options[0] == 3.0 for m in splines)
    log_p = flow.log_prob(x[:8])
    assert loaded.dtype == dtype and np.isfinite(log_p).all()
    assert np.array_equal(loaded.log_prob(x[:8]), log_p)
    assert np.array_equal(loaded.sample(4, np.random.default_rng(1)),
                          flow.sample(4, np.random.default_rng(1)))
