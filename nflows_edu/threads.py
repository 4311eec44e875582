r"""How many threads the BLAS library (OpenBLAS, MKL) may use for the matrix products.

A training step on 2-D data multiplies matrices of a few hundred rows by 64 columns. Split
over several threads, each piece takes microseconds and the threads spend their time waiting
for each other; on a machine that other programs also load (a shared JupyterHub, a laptop
with a browser open) a waiting thread that has lost its core makes the whole product wait,
and a multi-threaded step can be many times slower than a single-threaded one. Large
products do gain from more threads. ``blas_threads`` picks one or the other from the size
of the largest product, using ``threadpoolctl`` (the package scikit-learn uses for the same
problem) to change the setting for a ``with`` block only.
"""
import contextlib

from threadpoolctl import ThreadpoolController, threadpool_limits

_CONTROLLER = None  # made on first use: it inspects the loaded libraries once (~0.2 ms)

# Multiply-adds in the largest product of a training step below which one thread is used.
# Measured on the 2-core development machine while other processes loaded it, two threads
# against one: 512 x 64 x 64 (3.4e6, a 2-D RealNVP step) 0.24x as fast in float64;
# 256 x 512 x 512 (6.7e7, the D = 64 benchmark) 0.46x in float64 and 0.24x in float32. Only
# products well beyond that, on a machine with cores to spare, gain from more threads.
SMALL_PRODUCT = 1 << 27


def largest_product(flow, batch_size):
    """Multiply-adds of the largest ``(batch, n_in) @ (n_in, n_out)`` product among the
    flow's 2-D weight matrices, for a batch of ``batch_size``."""
    sizes = [p.shape[0] * p.shape[1] for _, p, _ in flow.parameters() if p.ndim == 2]
    return batch_size * max(sizes, default=0)


def choose_threads(threads, flow=None, batch_size=None):
    """The thread count ``blas_threads`` would use: an int, or None for the library default.

    ``threads`` is "auto" (1 for small products, else None), a positive int, or None.
    """
    if threads == "auto":
        if flow is None or batch_size is None:
            return None
        return 1 if largest_product(flow, batch_size) < SMALL_PRODUCT else None
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"blas_threads: expected 'auto', None or a positive integer, "
                         f"got {threads!r}")
    return threads


@contextlib.contextmanager
def blas_threads(threads="auto", flow=None, batch_size=None):
    """``with blas_threads(1): ...`` runs the block with one BLAS thread (see the module
    docstring); ``"auto"`` chooses from ``flow``'s largest product at ``batch_size``."""
    n = choose_threads(threads, flow, batch_size)
    if n is None:
        yield None
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield n


def blas_thread_count():
    """How many threads the BLAS library uses now: its limit inside a ``blas_threads`` or
    ``threadpool_limits`` block, its default (usually the CPU count) otherwise. The Numba
    kernel (``kernels.maf_inverse``) uses as many, so the sequential and the parallel
    direction of an autoregressive flow run on the same cores."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    counts = [lib.get_num_threads() for lib in _CONTROLLER.select(user_api="blas").lib_controllers]
    return max(1, min(counts, default=1))


def blas_info():
    """numpy's version, the BLAS it was built against, the CPU count and the thread variables
    of the environment: the first line of every benchmark's output."""
    import os

    import numpy as np
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception as err:  # older numpy without mode="dicts"
        name = f"unknown ({err})"
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    return f"numpy {np.__version__}, BLAS {name}, {os.cpu_count()} CPUs, env {env}"
