r"""``nflows-edu assignment make``: the student folder.

``make(names, out)`` writes into ``out``:

* ``my_flows.py``: for each class with chosen exercises, a subclass of the library's class
  in which each chosen method is a stub (its signature; a docstring with the layer's math, the
  library's own docstring, and a TODO naming the shapes; ``raise NotImplementedError``), between
  ``# BEGIN Class.method`` and ``# END Class.method`` lines. Everything else is inherited, so
  the rest of the layer works. The helpers the library's method uses are imported at the top;
  the solution is not there (the tests check that no line of a library method body is);
* ``walkthrough.ipynb``: one section per exercise, the math, and a cell that runs the checks
  (``checks.feedback``: round trip, log-det, gradients, each error printed next to its
  threshold);
* ``assignment_nbgrader.ipynb``: the same exercises written in the notebook, with the cell
  metadata nbgrader reads (solution cells, autograded test cells with points); nbgrader is
  optional, the notebook runs without it;
* ``README.md`` for the students and ``assignment.json`` (what ``grade`` reads).
"""
import ast
import inspect
import json
import os
import textwrap

from .catalogue import get_exercise

MODULE = "my_flows.py"
POINTS_PER_EXERCISE = 10
NBGRADER_SCHEMA = 3


def library_source(ex):
    r"""The library's source of exercise ``ex``'s method, dedented, with relative imports made
    absolute (``from .. import kernels`` -> ``from nflows_edu import kernels``), so it runs
    when pasted into a student's module."""
    import importlib.util
    import re
    method = getattr(ex.cls, ex.method)
    package = inspect.getmodule(method).__name__.rpartition(".")[0]
    text = textwrap.dedent(inspect.getsource(method))
    text = re.sub(r"from (\.+[\w.]*) import",
                  lambda m: f"from {importlib.util.resolve_name(m.group(1), package)} import",
                  text)
    if not ex.hide:
        return text
    # the helpers kept out of the student's module are imported inside the method
    module = inspect.getmodule(method).__name__
    return insert_at_top_of_body(text, [f"from {module} import {', '.join(ex.hide)}"])


def insert_at_top_of_body(text, new_lines):
    """The source of one function, ``text``, with ``new_lines`` (unindented) inserted as the
    first statements of its body, after its docstring."""
    body = ast.parse(text).body[0].body
    first = body[0]
    docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    at = first.end_lineno if docstring and len(body) > 1 else first.lineno - 1
    indent = " " * (body[1] if docstring and len(body) > 1 else first).col_offset
    lines = text.splitlines()
    lines[at:at] = [indent + line if line else line for line in new_lines]
    return "\n".join(lines) + "\n"


def _begin(name):
    return f"    # BEGIN {name}"


def _end(name):
    return f"    # END {name}"


def _helpers(ex, defined):
    r"""Module-level names the library's method uses (``np`` and helper functions), so the
    student can call what the library calls: ``{module: [names]}``."""
    method = getattr(ex.cls, ex.method)
    module = inspect.getmodule(method)
    codes, names = [method.__code__], set()
    while codes:
        code = codes.pop()
        names |= set(code.co_names)
        codes += [c for c in code.co_consts if inspect.iscode(c)]
    own = vars(module)
    found = {}
    for name in sorted(names):
        if (name in own and name not in defined and name != "np" and not name.startswith("__")
                and name not in ex.hide):
            value = own[name]
            source = getattr(value, "__module__", None) or module.__name__
            if inspect.ismodule(value):
                continue
            found.setdefault(source if source.startswith("nflows_edu") else module.__name__,
                             []).append(name)
    return found


def _docstring(ex):
    """The stub's docstring: the layer's math, the method's own docstring, the TODO."""
    parts = [inspect.cleandoc(ex.cls.__doc__ or "")]
    own = getattr(ex.cls, ex.method).__doc__
    if own:
        parts.append(f"{ex.method}: " + inspect.cleandoc(own))
    todo = f"TODO ({ex.name}): {ex.shapes or 'see the math above'}."
    if ex.method in ("backward", "inverse_backward", "weight_backward"):
        todo += "\nAdd parameter gradients into self.grads with +=, never rebind them."
    parts.append(todo)
    text = "\n\n".join(parts).replace('"""', "'''")
    return textwrap.indent(f'r"""{text}\n"""', " " * 8).lstrip()


def stub(ex):
    """The stub of one exercise, as lines of a class body (with its BEGIN/END markers)."""
    method = getattr(ex.cls, ex.method)
    signature = str(inspect.signature(method))
    return "\n".join([
        _begin(ex.name),
        f"    def {ex.method}{signature}:",
        f"        {_docstring(ex)}",
        f'        raise NotImplementedError("{ex.name}: not written yet")',
        _end(ex.name),
    ])


def _parts(names):
    """(docstring, import lines, class blocks) of ``my_flows.py``."""
    chosen = [get_exercise(n) for n in names]
    classes = {}
    for ex in chosen:
        classes.setdefault(ex.class_name, []).append(ex)
    imports = {}
    for ex in chosen:
        for module, found in _helpers(ex, set(classes)).items():
            imports.setdefault(module, set()).update(found)
    for group in classes.values():
        cls = group[0].cls
        imports.setdefault(cls.__module__, set()).add(f"{cls.__name__} as _{cls.__name__}")
    doc = "\n".join([
        'r"""Your flows: the methods marked TODO are yours to write.',
        "",
        "Exercises: " + ", ".join(names) + ".",
        "",
        "Each class below is a subclass of the library's: everything you do not write is the",
        "library's and works. Write each method between its BEGIN and END lines (keep them),",
        "run the walkthrough notebook for the checks after each exercise, then hand in this",
        "file. A backward method gets the cache of the library's forward: see its docstring.",
        '"""'])
    import_lines = ["import numpy as np", ""]
    for module in sorted(imports):
        found = sorted(imports[module])
        import_lines += [f"from {module} import (  # noqa: F401"]
        import_lines += [f"    {name}," for name in found] + [")"]
    blocks = []
    for cls_name, group in classes.items():
        head = [f"class {cls_name}(_{cls_name}):",
                f'    """Your {cls_name}: the methods below are yours, the rest is the '
                'library\'s."""', ""]
        blocks.append("\n".join(head) + "\n" + "\n\n".join(stub(ex) for ex in group) + "\n")
    return doc, import_lines, blocks


def student_module(names):
    """The text of ``my_flows.py`` for the exercises ``names``."""
    doc, import_lines, blocks = _parts(names)
    return doc + "\n" + "\n".join(import_lines) + "\n\n\n" + "\n\n".join(blocks)


def splice(text, name, source):
    r"""Replace the body between ``# BEGIN name`` and ``# END name`` in a student module's
    ``text`` by ``source`` (a method definition, any indentation); returns the new text.
    How the tests paste the library's methods and the mutants into a student's module."""
    lines = text.splitlines()
    try:
        start, stop = lines.index(_begin(name)), lines.index(_end(name))
    except ValueError:
        raise ValueError(f"splice: no BEGIN/END lines for {name!r}") from None
    body = textwrap.indent(textwrap.dedent(source).rstrip("\n"), "    ").splitlines()
    return "\n".join(lines[:start + 1] + body + lines[stop:]) + "\n"


# ------------------------------------------------------------------ notebooks
def _cell(kind, source, metadata=None):
    cell = {"cell_type": kind, "metadata": metadata or {}, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _notebook(cells):
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 4,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                        "name": "python3"},
                         "language_info": {"name": "python"}}}


def _math(ex):
    doc = inspect.cleandoc(ex.cls.__doc__ or "")
    return f"```\n{doc}\n```"


def walkthrough(names):
    cells = [_cell("markdown",
                   "# Normalizing flows by hand: your assignment\n\n"
                   f"Write the methods marked TODO in `{MODULE}`, one exercise at a time, and "
                   "run the cell after each exercise: it builds the layer at random sizes with "
                   "random parameters (away from initialisation), puts **your** class in it, and "
                   "checks it against central differences: the round trip `g(f(x)) = x`, the "
                   "log-determinant against `slogdet` of the numerical Jacobian, and every "
                   "gradient. Each error is printed next to the largest value that passes."),
             _cell("code", "import importlib\n\nimport my_flows\n"
                           "from nflows_edu.assignment.checks import feedback")]
    for k, name in enumerate(names, 1):
        ex = get_exercise(name)
        cells.append(_cell("markdown", f"## {k}. `{name}` ({ex.difficulty})\n\n"
                                       f"{ex.description}.\n\nShapes: {ex.shapes}\n\n{_math(ex)}"))
        cells.append(_cell("code", f"importlib.reload(my_flows)\nfeedback({name!r}, my_flows)"))
    return _notebook(cells)


def _nb(grade_id, solution=False, grade=False, locked=True, points=None):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version":
            NBGRADER_SCHEMA, "solution": solution}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def nbgrader_notebook(names):
    r"""The exercises written in the notebook itself, with nbgrader's cell metadata: solution
    cells (the stubs) and locked autograded test cells worth ``POINTS_PER_EXERCISE`` each."""
    _, import_lines, blocks = _parts(names)
    cells = [_cell("markdown", "# Normalizing flows by hand (nbgrader version)\n\nWrite the "
                   "methods marked TODO in the solution cells; the test cells run the same "
                   "checks as the autograder's first check.", _nb("intro")),
             _cell("code", "\n".join(import_lines).strip() + "\nfrom nflows_edu.assignment."
                   "checks import feedback", _nb("imports"))]
    for block in blocks:
        cls_name = block.split("(")[0].split()[1]
        cells.append(_cell("code", block,
                           _nb(f"{cls_name}-solution", solution=True, locked=False)))
    for name in names:
        ex = get_exercise(name)
        cells.append(_cell("code", f"assert feedback({name!r}, {ex.class_name})",
                           _nb(f"test-{name}", grade=True, points=POINTS_PER_EXERCISE)))
    return _notebook(cells)


def readme(names):
    rows = "\n".join(f"| `{n}` | {get_exercise(n).difficulty} | {get_exercise(n).description} |"
                     for n in names)
    return f"""# Your assignment: normalizing flows by hand

| exercise | level | what |
|---|---|---|
{rows}

## What to do

1. Open `{MODULE}`. Each class is a subclass of a layer of `nflows_edu`; the methods marked
   `TODO` raise `NotImplementedError`. Their docstrings hold the math, in the symbols of the
   code, and the TODO line names the shapes. Write each one between its `# BEGIN` and `# END`
   lines (keep those lines: the grader finds your methods by them).
2. After each exercise, run its cell in `walkthrough.ipynb`: it puts your class into layers
   built at random sizes with random parameters and checks the round trip, the log-determinant
   against the numerical Jacobian, and every gradient against central differences. Each error
   is printed next to the threshold it must stay under.
3. Check the whole folder as the grader will: `nflows-edu assignment grade .`

## How it is graded ({POINTS_PER_EXERCISE} points per exercise)

- **checks** (5): the same checks on hidden random draws (sizes, seeds, parameters);
- **reference** (3): your layer and the library's, on the same parameters and inputs, agree to
  1e-8 (outputs, log-dets, gradients);
- **training** (2, for layers with parameters): a short training run with your layer
  reaches the library's loss.

Each exercise is graded on its own, with the library's versions of the other methods, so a
backward method receives the cache that the library's forward returns (see the docstring).
Your code runs in a separate process with a time limit: an infinite loop, a crash, an
exception or arrays of the wrong shape cost that exercise, not the others.
Gradients are *added* into `self.grads[...]` with `+=`: never rebind or overwrite them.

`assignment_nbgrader.ipynb` holds the same exercises for courses that use nbgrader.
"""


def make(names, out, force=False):
    r"""Write the student folder for the exercises ``names`` into ``out``; returns the paths.

    Raises ``ValueError`` for an unknown exercise, a repeated one, or a folder that holds an
    assignment already (unless ``force``).
    """
    names = list(names)
    if not names:
        raise ValueError("assignment make: name at least one exercise (see 'assignment list')")
    if len(set(names)) != len(names):
        raise ValueError(f"assignment make: an exercise is named twice in {names}")
    for name in names:
        get_exercise(name)
    os.makedirs(out, exist_ok=True)
    target = os.path.join(out, MODULE)
    if os.path.exists(target) and not force:
        raise ValueError(f"assignment make: {target} exists already (a student's work?); "
                         "choose another --out or pass --force")
    files = {
        MODULE: student_module(names),
        "walkthrough.ipynb": json.dumps(walkthrough(names), indent=1) + "\n",
        "assignment_nbgrader.ipynb": json.dumps(nbgrader_notebook(names), indent=1) + "\n",
        "README.md": readme(names),
        "assignment.json": json.dumps({"exercises": names, "module": MODULE,
                                       "points_per_exercise": POINTS_PER_EXERCISE},
                                      indent=1) + "\n",
    }
    paths = []
    for name, text in files.items():
        path = os.path.join(out, name)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    return paths
