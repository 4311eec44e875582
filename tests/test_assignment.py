"""The assignment toolkit: the exercise catalogue, the mutation catalogue (the checker's
mutation score), and the autograder (make + grade on stubs, on the library's own methods, on
mutants, on student modules that loop, exit, raise or return the wrong shapes)."""
import numpy as np
import pytest

from nflows_edu import gradcheck
from nflows_edu.assignment import exercises, get_exercise
from nflows_edu.assignment.mutants import MUTANTS, SURVIVORS, check_mutant

REQUIRED = ["Linear.backward", "MLP.backward", "AdditiveCoupling.forward",
            "AdditiveCoupling.inverse", "AdditiveCoupling.backward", "AffineCoupling.forward",
            "AffineCoupling.inverse", "AffineCoupling.backward",
            "AffineCoupling.inverse_backward", "Scaling.backward", "MaskedLinear.backward",
            "MADE.masks", "MAF.inverse", "BatchNorm.backward", "ActNorm.backward",
            "LUInvertible1x1Conv.log_abs_det", "Squeeze.forward", "ResidualBlock.inverse",
            "ResidualBlock._logdet_backward"]


def test_catalogue_covers_the_required_exercises():
    names = [e.name for e in exercises()]
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))
    registered = set(gradcheck.layer_names())
    for ex in exercises():
        assert set(ex.registry) <= registered, ex.name
        assert ex.difficulty in ("easy", "medium", "hard")


def test_a_bad_declaration_is_refused():
    from nflows_edu.assignment import exercise
    from nflows_edu.bijectors import Scaling
    with pytest.raises(ValueError, match="Class.method"):
        exercise("Scaling.nonexistent", Scaling, "easy", "x", registry=("Scaling",))
    with pytest.raises(ValueError, match="declared already"):
        exercise("Scaling.backward", Scaling, "easy", "x", registry=("Scaling",))


# ------------------------------------------------------------------ mutation catalogue
def test_mutation_catalogue_is_well_formed():
    """Every mutant targets an exercise, applies (each edit matches its method's source
    exactly once), changes the source into code that compiles in the library's module, and
    names a check that exists for its exercise; each has its own name, so
    ``test_the_checker_catches_every_mutant`` below runs (and requires caught) every one.
    Builds no layer and runs no check: a fraction of a second."""
    from nflows_edu.assignment.checks import EXTRA_CHECKS
    from nflows_edu.assignment.mutants import mutant_class
    names = {e.name for e in exercises()}
    checks = {"round trip", "log-det", "gradient", "bookkeeping", "training-mode gradient",
              "raised"}
    for m in MUTANTS:
        assert m.target in names, m.name
        ex = m.exercise
        assert m.name.startswith(m.target + ": "), m.name
        assert m.expected in checks | set(ex.extra), (m.name, m.expected)
        assert m.edits and all(old != new for old, new in m.edits), m.name
        source = m.source  # raises unless every edit matches exactly once
        assert source != m.original, m.name
        mutated = mutant_class(m)  # compiles the mutated method in the library's module
        assert issubclass(mutated, ex.cls), m.name
        assert getattr(mutated, ex.method) is not getattr(ex.cls, ex.method), m.name
    assert set(EXTRA_CHECKS) >= {c for e in exercises() for c in e.extra}
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    layers = {e.class_name for e in exercises()}
    for name, reason in SURVIVORS:
        assert name.split(":")[0].split(".")[0] in layers and len(reason) > 50, name
        assert name not in {m.name for m in MUTANTS}, name


def check_two_draws(mutant):
    """The checker on ``mutant``, two draws of each check (a ``second_core`` job)."""
    return check_mutant(mutant, draws=2, seed=0)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
@pytest.mark.second_core(job=check_two_draws)
def test_the_checker_catches_every_mutant(mutant, second_core):
    result = second_core()  # check_two_draws(mutant), maybe computed ahead (conftest.py)
    assert result.caught, f"{mutant.name} survived the checker"
    # it is caught by the check the catalogue says
    expected = {"gradient": "gradient", "log-det": "log-det", "round trip": "round trip",
                "bookkeeping": "bookkeeping", "training-mode gradient": "training-mode",
                "raised": "raised", "spline_knots": "spline_knots"}[mutant.expected]
    assert any(expected in f or "raised" in f for f in result.failures), result.failures


def test_the_unmutated_methods_pass_the_same_checks():
    """The control: every exercise's own library method, through the same path, is not
    flagged (so a caught mutant is caught by its edit)."""
    from nflows_edu.assignment.checks import registry_checks
    for ex in exercises():
        results = registry_checks(ex, ex.cls, np.random.default_rng(0), draws=1)
        assert all(not bad for _, bad in results), (ex.name, results)


def test_the_library_agrees_with_itself_and_trains(rng):
    """Agreement and training, the grader's other two checks, pass for the library's own
    class on every exercise (full marks are reachable everywhere)."""
    from nflows_edu.assignment import checks
    for ex in exercises():
        assert all(not bad for _, bad in checks.agreement(ex, ex.cls, rng, draws=1)), ex.name
        ok, msg = checks.training(ex, ex.cls, rng, steps=5)
        assert ok, (ex.name, msg)


# ------------------------------------------------------------------ make and grade
import ast  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import textwrap  # noqa: E402

from nflows_edu.assignment.grade import POINTS, grade  # noqa: E402
from nflows_edu.assignment.make import library_source, make, splice  # noqa: E402
from nflows_edu.cli import main  # noqa: E402

SIX = ["AffineCoupling.backward", "Linear.backward", "MADE.masks", "BatchNorm.backward",
       "Squeeze.forward", "MAF.inverse"]
FULL = sum(POINTS.values())


def _body_lines(ex):
    """The code lines of the library method's body (not its signature or docstring)."""
    source = textwrap.dedent(inspect.getsource(getattr(ex.cls, ex.method)))
    fn = ast.parse(source).body[0]
    body = fn.body[1:] if isinstance(getattr(fn.body[0], "value", None), ast.Constant) \
        else fn.body
    lines = source.splitlines()
    return [lines[i].strip() for node in body
            for i in range(node.lineno - 1, node.end_lineno)]


def _tests_of(result, name):
    return {t["name"].rsplit(": ", 1)[1]: t for t in result["tests"]
            if t["name"].rsplit(": ", 1)[0] == name}


def test_make_writes_the_folder_without_any_solution(tmp_path):
    names = [e.name for e in exercises()]
    assert main(["assignment", "make", *names, "--out", str(tmp_path)]) == 0
    files = {p: open(tmp_path / p).read() for p in os.listdir(tmp_path)}
    assert set(files) == {"my_flows.py", "walkthrough.ipynb", "assignment_nbgrader.ipynb",
                          "README.md", "assignment.json"}
    everything = "\n".join(files.values())
    for ex in exercises():
        math = " ".join((ex.cls.__doc__ or "").split())  # given on purpose: the math
        for line in _body_lines(ex):
            if len(line) >= 12 and not line.startswith(("#", "raise")) and line not in math:
                assert line not in everything, f"{ex.name}: solution line {line!r} leaked"
    module = files["my_flows.py"]
    compile(module, "my_flows.py", "exec")
    assert module.count("raise NotImplementedError") == len(names)
    import nbformat
    for name in ("walkthrough.ipynb", "assignment_nbgrader.ipynb"):
        nbformat.validate(nbformat.reads(files[name], as_version=4))
    # the nbgrader notebook: solution cells and autograded test cells with points
    nb = json.loads(files["assignment_nbgrader.ipynb"])
    meta = [c["metadata"]["nbgrader"] for c in nb["cells"]]
    assert all(m["schema_version"] == 3 for m in meta)
    graded = [m for m in meta if m["grade"]]
    assert len(graded) == len(names) and all(m["points"] > 0 and m["locked"] for m in graded)
    assert any(m["solution"] and not m["locked"] for m in meta)
    assert len({m["grade_id"] for m in meta}) == len(meta)
    # refuses to overwrite a student's work
    assert main(["assignment", "make", "Linear.backward", "--out", str(tmp_path)]) == 2


def test_walkthrough_feedback_prints_errors_next_to_thresholds(tmp_path, capsys):
    from nflows_edu.assignment.checks import feedback
    from nflows_edu.assignment.grade import load_student_module
    make(["Scaling.backward"], tmp_path)
    mod = load_student_module(str(tmp_path))
    assert not feedback("Scaling.backward", mod, seed=0)
    assert "not written yet" in capsys.readouterr().out
    text = open(tmp_path / "my_flows.py").read()
    (tmp_path / "my_flows.py").write_text(
        splice(text, "Scaling.backward", library_source(get_exercise("Scaling.backward"))))
    mod = load_student_module(str(tmp_path))
    assert feedback("Scaling.backward", mod, seed=0)
    out = capsys.readouterr().out
    assert "pass if at most" in out and "1e-06" in out and "PASS" in out


def test_grade_stubs_zero_library_full_mutants_lose_the_caught_check(tmp_path):
    stubs, library, mutated = (tmp_path / d for d in ("stubs", "library", "mutants"))
    for d in (stubs, library, mutated):
        make(SIX, d)
    # untouched stubs: 0
    result = grade(str(stubs), seed=0, draws=1)
    untrained = sum(not get_exercise(name).train for name in SIX)  # no parameters
    assert result["score"] == 0
    assert result["max_score"] == FULL * len(SIX) - POINTS["training"] * untrained
    assert json.load(open(stubs / "results.json"))["score"] == 0
    # the library's own methods pasted in: full marks
    text = open(library / "my_flows.py").read()
    for name in SIX:
        text = splice(text, name, library_source(get_exercise(name)))
    (library / "my_flows.py").write_text(text)
    result = grade(str(library), seed=0, draws=1)
    assert result["score"] == result["max_score"] == FULL * len(SIX) - 2 * untrained, result
    saved = json.load(open(library / "results.json"))
    assert {"name", "score", "max_score", "output"} <= set(saved["tests"][0])
    # one mutant per exercise pasted in: each exercise loses the marks of its checks
    chosen = {"AffineCoupling.backward": "dlogdet sign flipped",
              "Linear.backward": "bias gradient averaged",
              "MADE.masks": "mask leak into the outputs",
              "BatchNorm.backward": "batch mean not differentiated",
              "Squeeze.forward": "plain reshape",
              "MAF.inverse": "log-det of the wrong direction"}
    text = open(mutated / "my_flows.py").read()
    for name, bug in chosen.items():
        mutant = next(m for m in MUTANTS if m.name == f"{name}: {bug}")
        text = splice(text, name, mutant.source)
    (mutated / "my_flows.py").write_text(text)
    result = grade(str(mutated), seed=0, draws=2)
    for name in SIX:
        tests = _tests_of(result, name)
        assert tests["checks"]["score"] < tests["checks"]["max_score"], (name, tests)
        assert sum(t["score"] for t in tests.values()) < sum(
            t["max_score"] for t in tests.values()), (name, tests)
    # partial credit: BatchNorm's training-mode bug passes the evaluation-mode draws and
    # fails the training-mode ones
    checks = _tests_of(result, "BatchNorm.backward")["checks"]
    assert 0 < checks["score"] < checks["max_score"], checks
    assert "training-mode gradient dx" in checks["output"]


SIZE_BUGS = {"Scaling.backward": "first 4 examples only",
             "Scaling.forward": "first 5 features only",
             "Scaling.inverse": "first 5 features only"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_coded_sizes_lose_the_checks_and_the_reference(tmp_path, seed):
    """Reported: Scaling.backward summing dlog_s over the first 4 examples got 8 of 10 (checks 5/5,
    reference 3/3, only training saw it) at three grading seeds, and Scaling.forward / inverse
    scaling only the first 5 features passed every registry draw: the hidden draws were of 1
    to 4 examples and 2 to 5 features. Every hidden draw is now larger than both."""
    names = [*SIZE_BUGS, "Scaling.inverse_backward"]
    make(names, tmp_path)
    text = open(tmp_path / "my_flows.py").read()
    for name, bug in SIZE_BUGS.items():
        text = splice(text, name, next(m for m in MUTANTS if m.name == f"{name}: {bug}").source)
    # the control: the library's own method, in the same folder, at the same seed
    text = splice(text, "Scaling.inverse_backward",
                  library_source(get_exercise("Scaling.inverse_backward")))
    (tmp_path / "my_flows.py").write_text(text)
    result = grade(str(tmp_path), seed=seed, draws=2)
    for name in SIZE_BUGS:
        tests = _tests_of(result, name)
        assert tests["checks"]["score"] == 0 and tests["reference"]["score"] == 0, (name, tests)
        assert "0/2 draws passed" in tests["checks"]["output"], tests
    control = _tests_of(result, "Scaling.inverse_backward")
    assert sum(t["score"] for t in control.values()) == FULL, control


BAD = {
    "Scaling.backward": "def backward(self, dz, dlogdet, cache):\n    while True:\n        pass\n",
    "AdditiveCoupling.forward": "def forward(self, x):\n    import sys\n    sys.exit(3)\n",
    "ActNorm.backward": "def backward(self, dz, dlogdet, cache):\n"
                        "    raise RuntimeError('oops')\n",
    "Squeeze.backward": "def backward(self, dz, dlogdet, cache):\n    return dz\n",
}


def test_loops_exits_exceptions_and_wrong_shapes_cost_only_their_exercise(tmp_path):
    names = [*BAD, "Linear.backward"]
    make(names, tmp_path)
    text = open(tmp_path / "my_flows.py").read()
    for name, source in BAD.items():
        text = splice(text, name, source)
    text = splice(text, "Linear.backward", library_source(get_exercise("Linear.backward")))
    (tmp_path / "my_flows.py").write_text(text)
    result = grade(str(tmp_path), seed=0, draws=1, timeout=10)
    messages = {"Scaling.backward": "time limit", "AdditiveCoupling.forward": "sys.exit(3)",
                "ActNorm.backward": "RuntimeError: oops",
                "Squeeze.backward": "wrong shape"}
    for name, message in messages.items():
        tests = _tests_of(result, name)
        assert sum(t["score"] for t in tests.values()) == 0, (name, tests)
        assert any(message in t["output"] for t in tests.values()), (name, tests)
    assert sum(t["score"] for t in _tests_of(result, "Linear.backward").values()) == FULL


def test_cli_assignment_list_and_grade(tmp_path, capsys):
    assert main(["assignment", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REQUIRED)
    assert main(["assignment", "make", "Scaling.backward", "--out", str(tmp_path)]) == 0
    assert main(["assignment", "grade", str(tmp_path), "--seed", "1", "--draws", "1"]) == 0
    out = capsys.readouterr().out
    assert "Scaling.backward: checks" in out and "0.00 /  10" in out
    assert main(["assignment", "grade", str(tmp_path / "nowhere")]) == 2
    results = tmp_path / "elsewhere.json"
    assert main(["assignment", "grade", str(tmp_path), "--draws", "1", "--results",
                 str(results)]) == 0
    assert json.load(open(results))["score"] == 0


def test_the_notebooks_run(tmp_path):
    """The walkthrough reports PASS once the methods are written; the nbgrader notebook's
    solution cells run and its autograded cells fail on the untouched stubs."""
    import nbformat
    from nbclient import NotebookClient
    names = ["Scaling.backward", "AffineCoupling.inverse"]
    make(names, tmp_path)
    text = open(tmp_path / "my_flows.py").read()
    for name in names:
        text = splice(text, name, library_source(get_exercise(name)))
    (tmp_path / "my_flows.py").write_text(text)
    nb = nbformat.read(str(tmp_path / "walkthrough.ipynb"), as_version=4)
    NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = ["".join(o.get("text", "") for o in c.outputs) for c in nb.cells
               if c.cell_type == "code"]
    assert sum(f"{name}: PASS" in "".join(outputs) for name in names) == 2
    nb = nbformat.read(str(tmp_path / "assignment_nbgrader.ipynb"), as_version=4)
    NotebookClient(nb, timeout=120, allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        meta = cell.metadata["nbgrader"]
        assert bool(errors) == meta["grade"], (meta, errors)
        if errors:
            assert errors[0].ename == "AssertionError"
