"""The library's structure: the layers do not depend on the course tooling (``assignment``),
and every layer is checked by the registry or says why it is not."""
import ast
import importlib
import importlib.util
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import nflows_edu
from nflows_edu import gradcheck
from nflows_edu.core import Bijector, Module

PACKAGE = Path(nflows_edu.__file__).parent
# the course tooling itself and the command line (which offers `nflows-edu assignment`)
MAY_IMPORT_ASSIGNMENT = ("nflows_edu.assignment", "nflows_edu.cli", "nflows_edu.__main__")


def _module_names():
    return ["nflows_edu"] + [m.name for m in pkgutil.walk_packages([str(PACKAGE)], "nflows_edu.")]


def _library_modules():
    return [m for m in _module_names()
            if not any(m == p or m.startswith(p + ".") for p in MAY_IMPORT_ASSIGNMENT)]


def _path(module):
    parts = module.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(module):
    """The nflows_edu modules ``module`` imports anywhere in its code (inside functions too),
    with the packages above each (importing a module runs its packages' ``__init__``)."""
    tree = ast.parse(_path(module).read_text())
    package = module if _path(module).name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                    if node.level else node.module)
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    known = set(_module_names())
    out = set()
    for name in found:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    return out


def test_no_library_module_imports_the_assignment_code():
    """No module outside ``assignment/`` and the command line imports ``nflows_edu.assignment``
    or the CLI, directly or through other modules, at import time or inside a function."""
    graph = {m: _imports(m) for m in _module_names()}
    for start in _library_modules():
        seen, todo = {start}, [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                assert not nxt.startswith(MAY_IMPORT_ASSIGNMENT), \
                    f"{start} reaches {nxt} (modules it reaches: {sorted(seen)})"
                seen.add(nxt)
                todo.append(nxt)


def test_importing_the_library_loads_no_assignment_code():
    """The same, as Python sees it: a fresh interpreter that imports every library module."""
    code = ("import importlib, sys\n"
            f"for m in {_library_modules()!r}:\n"
            "    importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({MAY_IMPORT_ASSIGNMENT!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(PACKAGE.parent)).stdout
    assert out.strip() == "[]", out


# Layers that no registry entry builds, each with the reason. A class listed here that a
# registration does build fails the test, so the list stays short and true.
EXEMPT = {
    "nflows_edu.core.Bijector": "the abstract base class: every method raises",
    "nflows_edu.nn.ReLU": "piecewise linear: central differences across the kink are wrong, "
                          "so registrations use tanh; tests/test_nn.py checks it with "
                          "check_module at random points",
    "nflows_edu.nn.LeakyReLU": "piecewise linear, as ReLU: checked in tests/test_nn.py",
    "nflows_edu.nn.Sequential": "the base of MLP, MADE and ConvNet, which are checked "
                                "(registered inside couplings, MAF, image couplings)",
}


def _qualified(cls):
    """``nflows_edu.nn.X`` for an nn module (its public name), ``module.X`` otherwise."""
    module = "nflows_edu.nn" if cls.__module__.startswith("nflows_edu.nn") else cls.__module__
    return f"{module}.{cls.__name__}"


def test_every_layer_is_registered_or_exempt():
    """Every public ``Bijector`` subclass and every ``nn`` module is built by some registry
    entry (on its own or inside another layer, so the registry checks run through it), or
    listed in ``EXEMPT`` with a reason."""
    layers = set()
    for name in _library_modules():
        for cls in vars(importlib.import_module(name)).values():
            if (inspect.isclass(cls) and cls.__module__ == name and not cls.__name__.startswith("_")
                    and (issubclass(cls, Bijector)
                         or (issubclass(cls, Module) and name.startswith("nflows_edu.nn")))):
                layers.add(_qualified(cls))
    rng = np.random.default_rng(0)
    built = set()
    for name in gradcheck.layer_names():
        layer, _ = gradcheck.make_layer(name, rng)
        built |= {_qualified(type(m)) for m in layer.modules()}
    assert "nflows_edu.nn.Linear" in layers and "nflows_edu.bijectors.coupling.AffineCoupling" \
        in layers
    assert sorted(layers - built - set(EXEMPT)) == [], "register these or exempt them"
    assert sorted(set(EXEMPT) & built) == [], "registered: remove them from EXEMPT"
    assert set(EXEMPT) <= layers and all(len(reason) > 20 for reason in EXEMPT.values())
