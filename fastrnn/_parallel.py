"""Worker threads for independent kernel calls (the two directions of a layer).

Kernels are compiled with ``nogil=True``, so plain Python threads run them truly in
parallel. Using our own threads, rather than numba's parallel threading layer, keeps the
layer safe to call from several Python threads at once whatever layer numba picks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba

_num_threads = max(1, int(numba.config.NUMBA_NUM_THREADS))
_executor: ThreadPoolExecutor | None = None


def set_num_threads(n: int) -> None:
    """Use at most ``n`` threads for fastrnn's own parallel work (default: NUMBA_NUM_THREADS)."""
    global _num_threads, _executor
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive int, got {n!r}")
    limit = os.cpu_count() or 1
    _num_threads = min(n, max(limit, 1))
    if _executor is not None:
        _executor.shutdown(wait=True)
        _executor = None


def get_num_threads() -> int:
    """The number of threads fastrnn's own parallel work may use."""
    return _num_threads


def run_tasks(tasks: list[Callable[[], None]], parallel: bool) -> None:
    """Run independent tasks, spreading them over the worker threads when worth it."""
    global _executor
    if not parallel or _num_threads == 1 or len(tasks) == 1:
        for task in tasks:
            task()
        return
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_num_threads - 1, thread_name_prefix="fastrnn")
    futures = [_executor.submit(task) for task in tasks[1:]]
    tasks[0]()
    for future in futures:
        future.result()
