r"""``nflows-edu assignment grade DIR``: the autograder.

For each exercise of ``DIR/assignment.json``, in its own subprocess with a time limit
(``python -m nflows_edu.assignment.grade --worker ...``), the student's class from
``DIR/my_flows.py`` (with the other exercise methods of its class reset to the library's,
``checks.isolate``) gets three checks, with partial credit:

* ``checks`` (5 points): ``gradcheck.check_bijector`` on hidden draws of each registry entry
  of the exercise (sizes, seeds and parameters chosen here, away from initialisation; sizes
  above any worked example's, ``checks.build_pair``) with the student's class swapped in, plus the exercise's extra checks; points in proportion to the
  draws that pass;
* ``reference`` (3 points): agreement with the library's class on the same parameters,
  inputs and upstream gradients (to ``checks.AGREE_TOL``), in proportion to the draws;
* ``training`` (2 points): 25 Adam steps of maximum likelihood with the student's layer and
  with the library's from the same start reach the same loss (``checks.TRAIN_TOL``), and the
  trained layers' samples agree.

An exercise whose process runs out of time, exits (``sys.exit``), crashes, fails to import the
module, or returns arrays of the wrong shape gets 0 with a message saying so; the others are
graded all the same. Output: a table on the terminal and ``DIR/results.json`` in the format
Gradescope's autograder reads (``score``, ``tests``: ``name``, ``score``, ``max_score``,
``output``).
"""
import argparse
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

POINTS = {"checks": 5.0, "reference": 3.0, "training": 2.0}
TIMEOUT = 60.0  # seconds per exercise


def load_student_module(folder, module="my_flows.py"):
    """Import ``folder/module`` under the name ``my_flows`` (any exception propagates)."""
    path = os.path.join(folder, module)
    spec = importlib.util.spec_from_file_location("my_flows", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["my_flows"] = mod
    spec.loader.exec_module(mod)
    return mod


def _zero(ex, message):
    """Every test of ``ex`` at 0, each with ``message``."""
    from .catalogue import get_exercise
    e = get_exercise(ex)
    parts = [p for p in POINTS if p != "training" or e.train]
    return [dict(name=f"{ex}: {p}", score=0.0, max_score=POINTS[p], output=message)
            for p in parts]


def _fraction_test(ex_name, part, results):
    passed = sum(not bad for _, bad in results)
    lines = [f"{label}: " + ("pass" if not bad else "; ".join(bad)) for label, bad in results]
    score = round(POINTS[part] * passed / max(len(results), 1), 2)
    return dict(name=f"{ex_name}: {part}", score=score, max_score=POINTS[part],
                output=f"{passed}/{len(results)} draws passed\n" + "\n".join(lines))


def grade_exercise(folder, name, seed, draws, module="my_flows.py"):
    r"""Grade one exercise in this process: the list of Gradescope tests. (The grader runs
    this in a subprocess; see ``grade``.)"""
    import numpy as np

    from . import checks
    from .catalogue import get_exercise
    ex = get_exercise(name)
    try:
        mod = load_student_module(folder, module)
    except BaseException as err:  # noqa: BLE001  (SystemExit at import included)
        return _zero(name, f"importing {module} failed: {type(err).__name__}: {err}")
    cls = getattr(mod, ex.class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ex.cls)):
        return _zero(name, f"{module} has no class {ex.class_name} subclassing the library's "
                           f"{ex.cls.__module__}.{ex.cls.__name__}")
    cls = checks.isolate(ex, cls)
    rng = np.random.default_rng(seed)
    try:
        agree = checks.agreement(ex, cls, rng, draws)
        shapes = [f"{label}: {b}" for label, bad in agree for b in bad if ": shape " in b]
        if shapes:
            return _zero(name, "returns arrays of the wrong shape: " + "; ".join(shapes))
        tests = [_fraction_test(name, "checks", checks.registry_checks(ex, cls, rng, draws)),
                 _fraction_test(name, "reference", agree)]
        if ex.train:
            try:
                ok, msg = checks.training(ex, cls, rng)
            except Exception as err:  # noqa: BLE001
                ok, msg = False, f"raised {type(err).__name__}: {err}"
            tests.append(dict(name=f"{name}: training", score=POINTS["training"] if ok else 0.0,
                              max_score=POINTS["training"], output=msg))
        return tests
    except SystemExit as err:
        return _zero(name, f"the code called sys.exit({err.code!r})")
    except BaseException as err:  # noqa: BLE001
        return _zero(name, f"raised {type(err).__name__}: {err}")


def _run_one(folder, name, seed, draws, timeout, module):
    """One exercise in a subprocess; returns its tests (0 with a message on any failure)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "nflows_edu.assignment.grade", "--worker", folder, name,
               str(seed), str(draws), out, module]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=folder, env=env, timeout=timeout,
                                  capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return _zero(name, f"time limit of {timeout:g} s exceeded (an infinite loop, or far "
                               "too slow); the process was stopped"), timeout
        elapsed = time.perf_counter() - start
        if not os.path.exists(out):
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            return _zero(name, f"the grading process exited with code {proc.returncode} "
                               "before reporting (sys.exit, os._exit or a crash in the "
                               "student's code)" + (": " + " | ".join(tail) if tail else "")), \
                elapsed
        with open(out) as f:
            return json.load(f), elapsed


def grade(folder, seed=None, draws=2, timeout=TIMEOUT, jobs=None, write=True, results=None):
    r"""Grade the student folder ``folder``; returns the Gradescope dict and (if ``write``)
    writes it to ``results`` (default ``folder/results.json``; Gradescope's
    ``run_autograder`` script would pass ``/autograder/results/results.json``).

    ``seed`` fixes the hidden draws (default: fresh entropy); ``jobs`` exercises are graded
    at once (default: the number of CPUs); ``timeout`` is per exercise, in seconds.
    """
    folder = os.path.abspath(folder)
    try:
        with open(os.path.join(folder, "assignment.json")) as f:
            spec = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"assignment grade: {folder} is not a student folder made by "
                         f"'nflows-edu assignment make' (assignment.json: {err})") from None
    names, module = spec["exercises"], spec.get("module", "my_flows.py")
    seed = secrets.randbits(32) if seed is None else int(seed)
    jobs = jobs or os.cpu_count() or 1
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = list(pool.map(lambda k: _run_one(folder, names[k], seed + 1000 * k, draws,
                                                timeout, module), range(len(names))))
    tests = [t for run, _ in runs for t in run]
    for (run, elapsed), name in zip(runs, names):
        for t in run:
            t["output"] = f"[{elapsed:.1f} s] " + t["output"]
    total = round(sum(t["score"] for t in tests), 2)
    result = dict(score=total, max_score=sum(t["max_score"] for t in tests), tests=tests,
                  execution_time=round(time.perf_counter() - start, 1),
                  output=f"{len(names)} exercises graded on hidden draws (grader seed {seed})")
    if write:
        with open(results or os.path.join(folder, "results.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


def format_results(result):
    """The terminal table: one row per test, then the total."""
    width = max([len(t["name"]) for t in result["tests"]] + [10])
    lines = [f"{'test':{width}s}  {'score':>11s}  first line of the output",
             "-" * (width + 60)]
    for t in result["tests"]:
        first = t["output"].splitlines()[0] if t["output"] else ""
        lines.append(f"{t['name']:{width}s}  {t['score']:5.2f} / {t['max_score']:3.0f}  "
                     f"{first[:100]}")
    lines.append(f"{'total':{width}s}  {result['score']:5.2f} / {result['max_score']:3.0f}  "
                 f"({result['execution_time']} s)")
    return "\n".join(lines)


def _worker(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=6,
                        metavar=("FOLDER", "EXERCISE", "SEED", "DRAWS", "OUT", "MODULE"))
    folder, name, seed, draws, out, module = parser.parse_args(argv).worker
    sys.path.insert(0, folder)
    tests = grade_exercise(folder, name, int(seed), int(draws), module)
    # written by the grader's code, after the student's code returned: a missing file means
    # the process ended early
    with open(out, "w") as f:
        json.dump(tests, f)


if __name__ == "__main__":
    _worker(sys.argv[1:])
