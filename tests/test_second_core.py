"""conftest.py's second core: a job computed in the child process gives the same result, to
the bit, as the test computing it itself."""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import conftest
from test_bijectors import check_draw


def test_a_job_gives_the_same_report_in_the_child_as_here():
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=conftest._child_setup) as child:
        there = child.submit(check_draw, "GlowCoupling", 3).result()
    here = check_draw("GlowCoupling", 3)
    assert there.grad_errors == here.grad_errors and there == here
