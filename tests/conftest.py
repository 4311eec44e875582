"""Shared fixtures: float64 everywhere, one seeded Generator per test."""
import numpy as np
import pytest


@pytest.fixture
def rng(request):
    # a different but reproducible stream per test
    seed = sum(map(ord, request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)
