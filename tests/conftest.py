"""Shared fixtures: float64 everywhere, one seeded Generator per test, and fast mode."""
import numpy as np
import pytest


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
