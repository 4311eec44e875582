"""Shared fixtures: float64 everywhere, one seeded Generator per test, and fast mode; one BLAS
thread, and the second core (below)."""
import inspect
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture
def rng(request):
    # a different but reproducible stream per test
    seed = sum(map(ord, request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


FAST = dict(NFLOWS_EDU_FAST="1")


@pytest.fixture(autouse=True)
def fast_mode(monkeypatch):
    """NFLOWS_EDU_FAST=1 in every test: a toy run's KL on 20,000 test points instead of a
    million (the tests check the plumbing; the README's commands measure), the demo's 200
    steps. A test of the full-size defaults removes it (``monkeypatch.delenv``)."""
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)


# One BLAS thread: the tests multiply small matrices, and this process shares the two cores
# with the child below (a multi-threaded OpenBLAS that has to share its cores spins).
threadpool_limits(1, user_api="blas")


# ---------------------------------------------------------------------------- the second core
# pytest runs the tests one after the other, on one core; CI and most laptops have two. A test
# whose work is one heavy, independent computation (the shared checks of one layer draw, a
# mutant's checks, a notebook run, a model-level check) names the function that does it:
#
#     @pytest.mark.second_core(job=job)      # job's arguments: the test's parameters
#     def test_something(name, draw, second_core):
#         report = second_core()             # = job(name=name, draw=draw)
#
# Once the tests are collected, the tests with a job are moved after the others, every job is
# queued in test order, and a child process takes them one at a time from the back of the
# queue while pytest runs the other tests and then the jobs' tests from the front. A test
# gets the child's result if the child has started its job, and otherwise computes it here;
# the asserts always run here. Same code, same seeds, one BLAS thread in both processes: the
# results are the same to the bit, wherever they were computed (tests/test_second_core.py).


def _child_setup():
    os.environ.update(FAST)
    threadpool_limits(1, user_api="blas")
    # what the child (and a notebook's kernel) prints is noise here: results and exceptions
    # come back through the pool, and pytest shows them in the test that asked
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)


class SecondCore:
    """The queue of jobs, the child process and the thread that feeds it one job at a time."""

    def __init__(self):
        self._queued = {}    # nodeid -> (job, kwargs), in test order
        self._started = {}   # nodeid -> Future of the child's result
        self._lock = threading.Lock()
        self._pool = None

    def start(self, items):
        self._queued.update((item.nodeid, _job(item)) for item in items)
        if self._queued:
            self._pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_setup)
            threading.Thread(target=self._feed_the_child, daemon=True).start()

    def _feed_the_child(self):
        while True:
            with self._lock:
                if not self._queued:
                    return
                nodeid, (job, kwargs) = self._queued.popitem()  # the last one
                try:
                    future = self._started[nodeid] = self._pool.submit(job, **kwargs)
                except RuntimeError:  # the pool was shut down: the session is over
                    return
            future.exception()  # wait for it (without raising), then take the next

    def result(self, item):
        with self._lock:
            queued = self._queued.pop(item.nodeid, None)
            future = self._started.get(item.nodeid)
        if future is not None:
            return future.result()
        job, kwargs = queued or _job(item)
        return job(**kwargs)

    def stop(self):
        with self._lock:
            self._queued.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _job(item):
    job = item.get_closest_marker("second_core").kwargs["job"]
    params = item.callspec.params if hasattr(item, "callspec") else {}
    return job, {name: params[name] for name in inspect.signature(job).parameters}


SECOND_CORE = SecondCore()


def pytest_configure(config):
    config.addinivalue_line("markers", "second_core(job=f): the test's work is f(**params); "
                                       "it may be computed ahead in a child process")


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(config, items):
    if config.option.collectonly:
        return
    # the other tests first (in their order), while the child starts on the jobs
    items.sort(key=lambda item: item.get_closest_marker("second_core") is not None)
    SECOND_CORE.start([item for item in items if item.get_closest_marker("second_core")])


def pytest_sessionfinish(session):
    SECOND_CORE.stop()


@pytest.fixture
def second_core(request):
    """``second_core()``: the result of the test's ``second_core`` job (see above)."""
    return lambda: SECOND_CORE.result(request.node)
