"""The lecture notebooks run top to bottom in a fresh kernel, and are committed executed.

Each notebook reads ``NFLOWS_EDU_FAST`` and trains for a few steps only when it is "1", so the
whole run takes seconds rather than minutes. The executed copy is thrown away: the committed
notebook (saved with its full-mode outputs) is never overwritten by a test.

A notebook run is a ``second_core`` job (``conftest.py``): it may execute ahead, beside the
other tests, from the child process that takes jobs from the back of the queue.
"""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(Path(__file__).parent.parent.glob("notebooks/*.ipynb"))

# The kernel's environment: fast mode, and one BLAS thread (the matrices are small, and a
# multi-threaded OpenBLAS that has to share the cores with other processes, such as the test
# run itself, spins and runs 5-20x slower).
ENV = dict(NFLOWS_EDU_FAST="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
           MKL_NUM_THREADS="1")


def execute(path):
    """Run the notebook at ``path`` top to bottom in a fresh kernel; raise on any error."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    # raises CellExecutionError, with the cell and traceback, on any error
    client.execute(env=dict(os.environ, **ENV))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
@pytest.mark.second_core(job=execute)
def test_notebook_runs(path, second_core):
    second_core()


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
