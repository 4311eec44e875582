"""``nflows-edu train --data digits`` (a few steps: the figures are measured in the README)."""
import json
import os

import numpy as np
import pytest

from nflows_edu import cli, io


@pytest.mark.parametrize("model", ["maf", "nsf"])
def test_train_a_vector_model_on_digits_writes_metrics_and_samples(model, tmp_path, capsys):
    out = tmp_path / "digits"
    argv = ["train", "--model", model, "--data", "digits", "--steps", "3", "--batch-size", "16",
            "--n-layers", "1", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == "digits" and metrics["best_step"] in (3,)
    assert np.isclose(metrics["test_bpd"], metrics["test_nll"] / (64 * np.log(2)))
    assert 3.0 < metrics["test_bpd"] < 8.0  # an (almost) untrained flow: near uniform, 4.09
    assert os.path.getsize(out / "samples.png") > 1000
    flow = io.load(out / "model.npz")
    assert flow.config["pixel_levels"] == 17 and flow.dim == 64
    assert "bits/dim" in capsys.readouterr().out


def test_digits_needs_a_maximum_likelihood_pixel_model(tmp_path, capsys):
    for model, data, words in (("iaf", "digits", "reverse KL"), ("iaf", "moons", "reverse KL"),
                               ("realnvp", "digits", "expected --model maf"),
                               ("glow", "moons", "use --data digits")):
        argv = ["train", "--model", model, "--data", data, "--steps", "2", "--out",
                str(tmp_path / model)]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("nflows-edu: error:") and words in err


@pytest.mark.parametrize("coupling", [None, "spline"])
def test_train_glow_on_digits_writes_metrics_and_temperature_samples(coupling, tmp_path, capsys):
    out = tmp_path / "glow"
    argv = ["train", "--model", "glow", "--data", "digits", "--steps", "2", "--batch-size",
            "16", "--n-layers", "1", "--dtype", "float32", "--out", str(out), "--no-progress"]
    argv += [] if coupling is None else ["--coupling", coupling]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "glow" and metrics["temperatures"] == [0.5, 0.75, 1.0]
    assert 0 < metrics["test_bpd_se"] < 0.5 * metrics["test_bpd"]
    assert np.isclose(metrics["test_bpd"], metrics["test_nll"] / (64 * np.log(2)))
    assert os.path.getsize(out / "samples.png") > 1000
    flow = io.load(out / "model.npz")
    assert flow.config["model"] == "glow" and flow.config["depth"] == 1
    assert flow.config["coupling"] == (coupling or "affine")
    assert flow.config["shape"] == [1, 8, 8] and flow.dim == 64
    assert "bits/dim" in capsys.readouterr().out


def test_coupling_option_is_glows_only(tmp_path, capsys):
    argv = ["train", "--model", "nsf", "--data", "digits", "--steps", "2", "--coupling",
            "spline", "--out", str(tmp_path / "nsf")]
    assert cli.main(argv) == 2
    assert "--coupling chooses glow's coupling layers" in capsys.readouterr().err
    assert not (tmp_path / "nsf").exists()
