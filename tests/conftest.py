"""Shared fixtures: float64 everywhere, one seeded Generator per test, and fast mode; one BLAS
thread, and the notebooks started in the background."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture
def rng(request):
    # a different but reproducible stream per test
    seed = sum(map(ord, request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def fast_mode(monkeypatch):
    """NFLOWS_EDU_FAST=1 in every test: a toy run's KL on 20,000 test points instead of a
    million (the tests check the plumbing; the README's commands measure), the demo's 200
    steps. A test of the full-size defaults removes it (``monkeypatch.delenv``)."""
    monkeypatch.setenv("NFLOWS_EDU_FAST", "1")


# One BLAS thread for the whole run: the tests multiply small matrices, where a second thread
# only adds synchronisation (the layer checks ran 17% faster with one), and the notebooks
# execute beside them on the second core (below).
threadpool_limits(1, user_api="blas")


def pytest_collection_modifyitems(items):
    """Start the selected notebooks now, in the background (see ``tests/test_notebooks.py``):
    they run in child processes on the second core while the other tests run on this one."""
    global _notebooks
    runs = [item for item in items if getattr(item, "originalname", "") == "test_notebook_runs"]
    if runs:
        _notebooks = runs[0].module
        _notebooks.start_in_background([item.callspec.params["path"] for item in runs])


_notebooks = None  # tests/test_notebooks.py, once it has notebooks queued


def pytest_sessionfinish(session):
    if _notebooks is not None:
        _notebooks.cancel_the_rest()
