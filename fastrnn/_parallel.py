"""fastrnn's own worker threads, and how they share the cores with BLAS.

Kernels are compiled with ``nogil=True``, so plain Python threads run them truly in
parallel. Using our own threads, rather than numba's parallel threading layer, keeps the
layer safe to call from several Python threads at once whatever layer numba picks.

While fastrnn's workers run, NumPy's OpenBLAS (the library the kernels call) is limited
to one thread: its pool keeps spinning after each call, and a spinning pool thread on a
core one of our workers needs halves that worker's speed. The limit is process-wide, so
it is reference-counted across concurrent callers and restored when the last one ends.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba

from ._kernels.blas import openblas

_num_threads = max(1, int(numba.config.NUMBA_NUM_THREADS))
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()

_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved_threads = 1


def set_num_threads(n: int) -> None:
    """Use at most ``n`` threads for fastrnn's own parallel work (default: NUMBA_NUM_THREADS)."""
    global _num_threads, _executor
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive int, got {n!r}")
    limit = os.cpu_count() or 1
    with _executor_lock:
        _num_threads = min(n, max(limit, 1))
        if _executor is not None:
            _executor.shutdown(wait=True)
            _executor = None


def get_num_threads() -> int:
    """The number of threads fastrnn's own parallel work may use."""
    return _num_threads


@contextmanager
def blas_single_threaded() -> Iterator[None]:
    """Limit OpenBLAS to one thread inside the block, restoring its setting afterwards."""
    global _blas_users, _blas_saved_threads
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved_threads = openblas.scipy_openblas_get_num_threads64_()
            openblas.scipy_openblas_set_num_threads64_(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                openblas.scipy_openblas_set_num_threads64_(_blas_saved_threads)


def run_tasks(tasks: list[Callable[[], None]], parallel: bool) -> None:
    """Run independent tasks, dealt round-robin to the calling thread and the workers.

    Tasks of similar size balance: with n threads, the calling thread runs tasks 0, n,
    2n, ... and worker i runs tasks i, n + i, ...
    """
    global _executor
    lanes = min(_num_threads, len(tasks)) if parallel else 1
    if lanes <= 1:
        for task in tasks:
            task()
        return
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=_num_threads - 1, thread_name_prefix="fastrnn")
        executor = _executor

    def run_lane(lane: int) -> None:
        for task in tasks[lane::lanes]:
            task()

    futures = [executor.submit(run_lane, lane) for lane in range(1, lanes)]
    try:
        run_lane(0)
    finally:
        for future in futures:
            future.result()
