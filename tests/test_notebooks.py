"""The lecture notebooks run top to bottom in a fresh kernel, and are committed executed.

Each notebook reads ``NFLOWS_EDU_FAST`` and trains for a few steps only when it is "1", so the
whole run takes seconds rather than minutes. The executed copy is thrown away: the committed
notebook (saved with its full-mode outputs) is never overwritten by a test.

The notebooks run in child processes (``python tests/test_notebooks.py NOTEBOOK``, one after
the other), started by ``conftest.py`` as soon as the tests are collected: a kernel is a
process of its own anyway, so they run on the second core while the rest of the suite runs on
the first, and ``test_notebook_runs`` only waits for its notebook's result.
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(Path(__file__).parent.parent.glob("notebooks/*.ipynb"))

# The kernel inherits its environment from the child process: fast mode, and one BLAS thread
# (the matrices are small, and a multi-threaded OpenBLAS that has to share the cores with
# other processes, here the test run itself, spins and runs 5-20x slower).
ENV = dict(NFLOWS_EDU_FAST="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
           MKL_NUM_THREADS="1")

_POOL = ThreadPoolExecutor(max_workers=1)  # one notebook at a time
_RUNS = {}  # notebook path -> Future of its finished child process


def execute(path):
    """Run the notebook at ``path`` top to bottom in a fresh kernel; raise on any error."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error


def _execute_in_child(path):
    return subprocess.run([sys.executable, __file__, str(path)], env=dict(os.environ, **ENV),
                          capture_output=True, text=True)


def start_in_background(paths):
    """Queue the notebooks at ``paths``, each to run in a child process from a thread that only
    waits for it (called by ``conftest.py`` once the tests are collected)."""
    for path in paths:
        if path not in _RUNS:
            _RUNS[path] = _POOL.submit(_execute_in_child, path)


def cancel_the_rest():
    """Drop the notebooks not yet started (the session ended early, e.g. ``pytest -x``)."""
    _POOL.shutdown(wait=False, cancel_futures=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
    start_in_background([path])  # already queued, unless collected without conftest.py
    done = _RUNS[path].result()
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_saved_executed(path):
    """Committed with outputs, run top to bottom in one session (counts 1, 2, 3, ...)."""
    nb = nbformat.read(path, as_version=4)
    cells = _code_cells(nb)
    assert cells, f"{path.name} has no code cells"
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name} was not saved after a clean top-to-bottom run: execution counts {counts}")
    assert any(cell.outputs for cell in cells), f"{path.name} was saved without outputs"
    errors = [out for cell in cells for out in cell.outputs if out.output_type == "error"]
    assert not errors, f"{path.name} was saved with an error output"


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.strip()]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


if __name__ == "__main__":
    execute(Path(sys.argv[1]))
