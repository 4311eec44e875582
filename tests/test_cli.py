"""Tests for the ``nflows-edu`` command line, run in-process through ``cli.main``."""
import json
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nflows_edu import cli, gradcheck, io, train  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_args(out, *extra):
    return ["train", "--model", "realnvp", "--data", "checkerboard", "--steps", "50",
            "--batch-size", "128", "--lr", "1e-3", "--out", str(out), "--n-layers", "2",
            "--hidden", "16", "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small training run shared by the tests that need a saved model."""
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NFLOWS_EDU_FAST", "1")
        assert cli.main(train_args(out)) == 0
    return out


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path


def assert_one_line_error(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nflows-edu: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]


def test_train_writes_model_metrics_and_pictures(trained):
    for name in ("density", "samples", "warp", "loss"):
        assert_png(trained / f"{name}.png")
    with open(trained / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["model"] == "realnvp" and metrics["data"] == "checkerboard"
    assert (metrics["steps"], metrics["batch_size"], metrics["lr"], metrics["seed"]) == (
        50, 128, 1e-3, 0)
    assert np.isfinite(metrics["test_nll"]) and metrics["seconds"] > 0
    # checkerboard has a closed-form density, so KL = NLL - log 32 is reported.
    assert metrics["kl"] == pytest.approx(metrics["test_nll"] - np.log(32))
    assert (trained / "model.npz").stat().st_size > 0


def test_train_refuses_to_overwrite(trained, capsys, monkeypatch):
    model = trained / "model.npz"
    before = (model.read_bytes(), model.stat().st_mtime_ns)
    # It must refuse before training: a call to fit would be a wasted run.
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    capsys.readouterr()
    assert cli.main(train_args(trained)) == 2
    assert_one_line_error(capsys.readouterr().err, str(model), "--overwrite")
    assert (model.read_bytes(), model.stat().st_mtime_ns) == before


def test_train_overwrite_replaces_the_model(tmp_path, capsys):
    assert cli.main(train_args(tmp_path, "--steps", "5")) == 0
    first = (tmp_path / "model.npz").read_bytes()
    assert cli.main(train_args(tmp_path, "--steps", "5", "--seed", "1", "--overwrite")) == 0
    assert (tmp_path / "model.npz").read_bytes() != first
    out = capsys.readouterr().out
    assert "test NLL" in out and "KL" in out and "wall time" in out


def test_train_on_data_without_closed_form_has_no_kl(tmp_path, capsys):
    args = train_args(tmp_path, "--steps", "5", "--data", "moons", "--model", "nice",
                      "--dtype", "float32")
    assert cli.main(args) == 0
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["kl"] is None and metrics["model"] == "nice"
    assert "KL" not in capsys.readouterr().out


def test_sample_to_stdout_is_reproducible(trained, capsys):
    args = ["sample", "--model", str(trained / "model.npz"), "-n", "7", "--seed", "3"]
    capsys.readouterr()
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    rows = np.loadtxt(first.splitlines(), delimiter=",")
    assert rows.shape == (7, 2) and np.all(np.isfinite(rows))
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first
    assert cli.main(args[:-1] + ["4"]) == 0
    assert capsys.readouterr().out != first


def test_sample_at_a_temperature(trained, tmp_path):
    from nflows_edu import io
    path = tmp_path / "cold.npy"
    args = ["sample", "--model", str(trained / "model.npz"), "-n", "5", "--seed", "2",
            "--temperature", "0.5", "--out", str(path)]
    assert cli.main(args) == 0
    flow = io.load(trained / "model.npz")
    want = flow.sample(5, np.random.default_rng(2), temperature=0.5)
    np.testing.assert_array_equal(np.load(path), want)
    assert cli.main(args[:-3] + ["0", "--out", str(path)]) == 2  # not positive


@pytest.mark.parametrize("ext", [".npy", ".csv"])
def test_sample_to_file(trained, tmp_path, ext):
    path = tmp_path / f"x{ext}"
    args = ["sample", "--model", str(trained / "model.npz"), "-n", "11", "--seed", "0",
            "--out", str(path)]
    assert cli.main(args) == 0
    x = np.load(path) if ext == ".npy" else np.loadtxt(path, delimiter=",")
    assert x.shape == (11, 2)
    assert cli.main(args) == 0
    again = np.load(path) if ext == ".npy" else np.loadtxt(path, delimiter=",")
    np.testing.assert_array_equal(x, again)


def test_sample_missing_model(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    assert cli.main(["sample", "--model", str(missing), "-n", "3"]) == 2
    assert_one_line_error(capsys.readouterr().err, str(missing))


@pytest.mark.parametrize("content", [b"this is not a model \x00\xff" * 10, b""])
def test_sample_corrupt_model(tmp_path, capsys, content):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(content)
    assert cli.main(["sample", "--model", str(bad), "-n", "3"]) == 2
    assert_one_line_error(capsys.readouterr().err, str(bad))


def test_sample_npz_with_a_broken_config(tmp_path, capsys):
    bad = tmp_path / "config.npz"
    np.savez(bad, __config__=np.array(json.dumps({"model": "realnvp", "depth": 3})))
    assert cli.main(["sample", "--model", str(bad), "-n", "3"]) == 2
    assert_one_line_error(capsys.readouterr().err, str(bad))


@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "realnvp", "--data", "nosuchdata", "--steps", "5",
      "--batch-size", "8", "--lr", "1e-3", "--out", "x"], ["nosuchdata"]),
    (["train", "--model", "realnvp", "--data", "moons", "--steps", "-5",
      "--batch-size", "8", "--lr", "1e-3", "--out", "x"], ["--steps", "-5"]),
    (["train", "--model", "realnvp", "--data", "moons", "--steps", "5",
      "--batch-size", "8", "--lr", "nan", "--out", "x"], ["--lr", "nan"]),
    (["train", "--model", "realnvp", "--data", "moons", "--steps", "5",
      "--batch-size", "8", "--lr", "1e-3", "--out", "x", "--hidden", "64,,"], ["--hidden"]),
    (["train", "--model", "maf", "--data", "moons", "--out", "x", "--beta2", "1"],
     ["--beta2", "[0, 1)"]),
    (["sample", "--model", "m.npz", "-n", "zero"], ["-n", "zero"]),
    (["sample", "--model", "m.npz", "-n", "3", "--out", "x.txt"], ["x.txt"]),
    (["nosuchcommand"], ["nosuchcommand"]),
])
def test_user_errors_are_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, *words)
    assert not (tmp_path / "x").exists()


def test_non_finite_loss_is_a_user_error(tmp_path, capsys, monkeypatch):
    def diverge(*args, **kwargs):
        raise train.NonFiniteLossError("fit: the loss became nan at step 3")

    monkeypatch.setattr(train, "fit", diverge)
    assert cli.main(train_args(tmp_path)) == 2
    assert_one_line_error(capsys.readouterr().err, "loss became nan")
    assert not (tmp_path / "model.npz").exists()


def test_check_prints_a_row_per_layer(capsys):
    assert cli.main(["check", "--seed", "0", "--draws", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == gradcheck.CheckReport.HEADER
    assert lines[1] == gradcheck.CheckReport.THRESHOLD_LINE
    # after the rows, one line per layer with its own bars, saying why (CNF: RK4's error)
    reasons = [line for line in lines[2:-1] if ": its own bars (" in line]
    rows = [line for line in lines[2:-1] if line not in reasons]
    assert [line.split(": its own bars")[0] for line in reasons] == [
        name for name in gradcheck.layer_names() if gradcheck.thresholds(name)[1]]
    assert [row[:28].strip() for row in rows] == list(gradcheck.layer_names())  # names may have spaces
    assert all(" pass " in row for row in rows)
    assert "passed" in lines[-1]


def test_check_one_layer_several_draws(capsys):
    assert cli.main(["check", "--layer", "Scaling", "--draws", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [row.split()[0] for row in lines[2:5]] == ["Scaling"] * 3
    assert lines[6] == "worst of 3 draws per layer:" and lines[8].split()[0] == "Scaling"
    assert cli.main(["check", "--layer", "NoSuchLayer"]) == 2
    assert "NoSuchLayer" in capsys.readouterr().err


def test_check_fails_when_a_layer_fails(capsys, monkeypatch):
    # three layers are enough to see the failing row and the summary (the full run is above)
    reports = gradcheck.check_all(0, 1, ["Scaling", "AffineCoupling", "MAF"])
    reports[2].grad_errors["forward"]["x"] = 0.5  # as if one backward were wrong
    monkeypatch.setattr(gradcheck, "check_all", lambda seed, draws, names: reports)
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert reports[2].name in out[-1] and "FAIL" in out[2 + 2]


STUDENT_LAYERS = {
    "todo": """
        def backward(self, dz, dlogdet, cache):
            raise NotImplementedError("TODO: write the backward pass")
    """,
    "rebinds": """
        def backward(self, dz, dlogdet, cache):
            x, z = cache
            self.grads["log_s"] = (dz * z).sum(axis=0) + dlogdet.sum()  # rebinds the array
            return dz * np.exp(self.params["log_s"])
    """,
    "overwrites": """
        def backward(self, dz, dlogdet, cache):
            x, z = cache
            self.grads["log_s"][...] = (dz * z).sum(axis=0) + dlogdet.sum()  # = instead of +=
            return dz * np.exp(self.params["log_s"])
    """,
}


@pytest.mark.parametrize("fault", sorted(STUDENT_LAYERS))
def test_check_exits_1_for_an_unfinished_or_misbookkept_student_layer(fault, tmp_path, capsys):
    import textwrap
    name = f"Student_{fault}"
    source = textwrap.dedent("""
        import numpy as np
        from nflows_edu.bijectors import Scaling
        from nflows_edu.gradcheck import register

        class StudentScaling(Scaling):
        {body}

        register({name!r}, lambda dim, rng: StudentScaling(dim))
    """).format(body=textwrap.indent(textwrap.dedent(STUDENT_LAYERS[fault]), "    "), name=name)
    path = tmp_path / "student.py"
    path.write_text(source)
    try:
        assert cli.main(["check", "--module", str(path)]) == 1
    finally:
        gradcheck.unregister(name)
    out = capsys.readouterr().out
    assert name in out.splitlines()[-1]
    assert {"todo": "not implemented", "rebinds": "rebinds",
            "overwrites": "instead of adding"}[fault] in out


def test_demo_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NFLOWS_EDU_FAST", "1")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--no-progress"]) == 0
    for name in ("density", "samples", "warp", "loss"):
        assert_png(out / f"{name}.png")
    assert (out / "model.npz").exists()
    with open(out / "metrics.json") as f:
        assert json.load(f)["steps"] == 200
    printed = capsys.readouterr().out
    assert "test NLL" in printed and "KL" in printed and str(out / "warp.png") in printed


def test_demo_estimates_its_kl_on_n_test_demo_points(tmp_path, monkeypatch):
    """The demo trains at DEMO_LR and estimates its KL on N_TEST_DEMO fresh points; ``train``
    keeps n_test's default (a million for a discrete flow); NFLOWS_EDU_FAST=1 overrides both."""
    seen = []
    monkeypatch.setattr(cli.recipes, "run", lambda config: seen.append(config) or
                        {"interrupted": False})
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    assert seen[-1].n_test == cli.N_TEST_DEMO < cli.N_TEST
    assert (seen[-1].model, seen[-1].lr, seen[-1].dtype) == ("realnvp", cli.DEMO_LR, "float32")
    assert cli.main(["train", "--model", "realnvp", "--data", "checkerboard", "--out",
                     str(tmp_path / "t")]) == 0
    assert seen[-1].n_test is None
    monkeypatch.delenv("NFLOWS_EDU_FAST", raising=False)
    assert cli.n_test("realnvp", cli.N_TEST_DEMO) == cli.N_TEST_DEMO
    assert cli.n_test("realnvp") == cli.N_TEST and cli.n_test("ffjord") == cli.N_TEST_CONTINUOUS
    monkeypatch.setenv("NFLOWS_EDU_FAST", "1")
    assert cli.n_test("realnvp", cli.N_TEST_DEMO) == cli.N_TEST_FAST


def test_python_dash_m_help():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "nflows_edu", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and "sample" in result.stdout


def test_bad_arguments_raise_usage_error_inside_the_parser():
    from nflows_edu.cli import UsageError, build_parser
    with pytest.raises(UsageError, match="positive integer"):
        build_parser().parse_args(["train", "--model", "nice", "--data", "moons", "--steps", "0",
                                   "--out", "x"])


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nflows-edu {__import__('nflows_edu').__version__}"


def test_train_refuses_an_out_that_is_a_file_before_training(tmp_path, capsys, monkeypatch):
    target = tmp_path / "results.txt"
    target.write_text("not a directory")
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    assert cli.main(train_args(target)) == 2
    assert_one_line_error(capsys.readouterr().err, "is a file")


def test_a_diverging_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(train_args(tmp_path, "--lr", "1e4", "--steps", "200")) == 2
    assert_one_line_error(capsys.readouterr().err, "diverged", "learning rate")
    assert not (tmp_path / "model.npz").exists()


def test_clip_and_threads_options(tmp_path, capsys):
    assert cli.main(train_args(tmp_path, "--steps", "3", "--clip", "5", "--threads", "1")) == 0
    assert "BLAS threads: 1" in capsys.readouterr().out
    assert cli.main(train_args(tmp_path / "b", "--threads", "0")) == 2
    assert cli.main(train_args(tmp_path / "c", "--clip", "-1")) == 2


def test_maf_takes_its_own_toy_defaults_and_the_flags_override_them(tmp_path, monkeypatch):
    seen = []  # Adam's betas of every fit
    real = train.fit

    def spy(*args, **kwargs):
        seen.append(kwargs["betas"])
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "fit", spy)
    base = ["train", "--model", "maf", "--data", "8gaussians", "--steps", "3", "--batch-size",
            "16", "--no-progress"]
    assert cli.main(base + ["--out", str(tmp_path / "own")]) == 0
    flags = ["--hidden", "8", "--beta2", "0.9"]
    assert cli.main(base + ["--out", str(tmp_path / "set"), *flags]) == 0
    assert seen == [(0.9, 0.99), (0.9, 0.9)]
    own, set_ = (io.load(tmp_path / d / "model.npz") for d in ("own", "set"))
    assert own.config["hidden"] == [64, 64, 64] and set_.config["hidden"] == [8]
    with open(tmp_path / "own" / "metrics.json") as f:
        assert json.load(f)["beta2"] == 0.99
    # the other models keep HIDDEN and BETA2
    assert cli.main(train_args(tmp_path / "rnvp", "--steps", "2")) == 0
    assert seen[-1] == (0.9, cli.BETA2)


@pytest.mark.parametrize("extra", [["--hidden", "32"], ["--beta2", "0.9"]])
def test_digits_refuses_the_toy_only_flags(extra, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    argv = ["train", "--model", "maf", "--data", "digits", "--out", str(tmp_path), *extra]
    assert cli.main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, extra[0], "2-D toys")


def test_ctrl_c_saves_the_model_so_far(tmp_path, capsys, monkeypatch):
    real = train.fit

    def interrupted_fit(flow, *args, **kwargs):
        calls = {"n": 0}
        loss_and_grad = flow.loss_and_grad

        def stop_at_5(x):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
            return loss_and_grad(x)

        flow.loss_and_grad = stop_at_5
        return real(flow, *args, **kwargs)

    monkeypatch.setattr(train, "fit", interrupted_fit)
    assert cli.main(train_args(tmp_path)) == 130
    assert "interrupted" in capsys.readouterr().out
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["interrupted"] and metrics["steps"] == 4
    assert (tmp_path / "model.npz").exists()


def test_sample_finds_the_model_in_a_directory(trained, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert cli.main(["sample", "--model", str(trained), "-n", "5", "--out", str(out)]) == 0
    assert np.load(out).shape == (5, 2)


def test_check_reports_a_student_module_that_does_not_import(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text("import numpy as np\n\nundefined_name + 1\n")
    assert cli.main(["check", "--module", str(path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "NameError", "line 3")


def test_check_reports_a_layer_that_raises_and_goes_on(capsys):
    from nflows_edu.bijectors import Scaling

    class Crashing(Scaling):
        def forward(self, x):
            raise IndexError("off by one")

    gradcheck.register("Crashing", lambda dim, rng: Crashing(dim))
    try:
        assert cli.main(["check", "--layer", "Crashing", "--layer", "Scaling"]) == 1
    finally:
        gradcheck.unregister("Crashing")
    out = capsys.readouterr().out
    assert "raised IndexError: off by one" in out and "FAIL" in out
    assert any(line.startswith("Scaling") and " pass " in line for line in out.splitlines())


def test_importing_the_cli_keeps_a_notebooks_backend():
    """A notebook imports ``cli`` for its recipes and constants: its inline figures must keep
    showing (the command selects Agg when it runs, not when it is imported)."""
    code = ("import matplotlib; matplotlib.use('svg'); import nflows_edu.cli; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"


def test_flow_matching_trains_by_flow_matching_not_maximum_likelihood(tmp_path, monkeypatch,
                                                                       capsys):
    calls = []
    real = train.fit_flow_matching

    def spy(*args, **kwargs):
        calls.append((kwargs["steps"], kwargs["target"], args[0].dtype))
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "fit_flow_matching", spy)
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained by likelihood"))
    argv = ["train", "--model", "flow_matching", "--data", "8gaussians", "--steps", "5",
            "--batch-size", "64", "--hidden", "8", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    # its toy defaults: the marginal target, float32 (unless --dtype says otherwise)
    assert calls == [(5, "marginal", np.float32)]
    assert io.load(tmp_path / "model.npz").config["model"] == "flow_matching"
    assert_png(tmp_path / "loss.png")
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    assert np.isfinite(metrics["test_nll"]) and metrics["dtype"] == "float32"
    assert "parameters, float32)" in capsys.readouterr().out
    assert cli.main(argv[:-1] + [str(tmp_path / "c"), "--dtype", "float64"]) == 0
    assert calls[-1] == (5, "marginal", np.float64)
    capsys.readouterr()
    assert cli.main(argv[:-1] + [str(tmp_path / "b"), "--n-layers", "2"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--n-layers", "flow_matching")


def test_train_with_parameter_averaging(tmp_path, capsys):
    """--ema: the toy run trains and reports as usual; flow matching refuses it in one line."""
    assert cli.main(train_args(tmp_path / "ema", "--ema", "0.9")) == 0
    assert json.loads((tmp_path / "ema" / "metrics.json").read_text())["test_nll"] < 10
    assert cli.main(["train", "--model", "flow_matching", "--data", "8gaussians", "--steps",
                     "5", "--ema", "0.9", "--out", str(tmp_path / "fm")]) == 2
    assert "--ema" in capsys.readouterr().err
    assert cli.main(train_args(tmp_path / "bad", "--ema", "1")) == 2
