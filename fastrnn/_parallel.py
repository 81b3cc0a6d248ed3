"""How fastrnn's layer kernels share the cores: numba's threads, and BLAS held to one.

A layer big enough to split runs as one numba ``parallel=True`` kernel whose ``prange``
loops hand its pieces (directions, batch ranges) to numba's already-running threads.

While those threads run, NumPy's OpenBLAS (the library the kernels call) is limited to
one thread: its pool keeps spinning after each call, and a pool thread spinning on a
core that one of our threads needs halves that thread's speed. The limit is process-wide, so
it is reference-counted across concurrent callers and restored when the last one ends.

Numba's ``workqueue`` threading layer (its fallback when neither TBB nor OpenMP can be
loaded) must not be entered from two threads at once, so with it parallel kernels take
turns; the ``omp`` and ``tbb`` layers let concurrent callers run side by side. GNU
OpenMP cannot be used again in a child process forked after it started (numba stops
such a child), so a forked child of a process whose numba threads had started stays on
one thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import numba
import numpy as np
from numba import prange

from ._config import jit_parallel
from ._kernels.blas import openblas

_num_threads = max(1, int(numba.config.NUMBA_NUM_THREADS))

_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved_threads = 1

_layer_lock = threading.Lock()
_layer_known = False
_layer_serialises = False
_workqueue_lock = threading.Lock()


def set_num_threads(n: int) -> None:
    """Use at most ``n`` threads for fastrnn's parallel work (default and ceiling: NUMBA_NUM_THREADS).

    With ``n = 1`` fastrnn's BLAS calls run on one thread as well, for the length of each
    layer call: the setting for several processes or threads that share the cores.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive int, got {n!r}")
    _num_threads = min(n, max(1, int(numba.config.NUMBA_NUM_THREADS)))


def get_num_threads() -> int:
    """The number of threads fastrnn's parallel work may use (on this thread, within ``thread_limit``)."""
    limit = _calling_thread.limit
    return _num_threads if limit is None else min(_num_threads, limit)


class _CallingThread(threading.local):
    limit: int | None = None  # a class default: no exception to catch on a thread that never set one


_calling_thread = _CallingThread()


@contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """At most ``n`` threads for the fastrnn calls made on this thread inside the block.

    ``fastrnn.torch`` runs its calls under torch's own thread count, so that a process that
    gave torch one thread (``torchrun`` does, with several processes per machine) gets one
    from fastrnn too, BLAS included, as with ``set_num_threads(1)``.
    """
    previous = _calling_thread.limit
    _calling_thread.limit = n if previous is None else min(n, previous)
    try:
        yield
    finally:
        _calling_thread.limit = previous


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


def _after_fork_in_child() -> None:
    # Ask numba, not _layer_known: other numba code in the process may have started them.
    global _num_threads
    try:
        numba.threading_layer()
    except ValueError:  # numba's threads never started in the parent
        return
    _num_threads = 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@jit_parallel
def _start_threads(values):
    for i in prange(values.size):
        values[i] = i


def threading_layer() -> str:
    """The numba threading layer fastrnn's parallel kernels run on, starting it if needed."""
    global _layer_known, _layer_serialises
    if not _layer_known:
        with _layer_lock:
            if not _layer_known:
                _start_threads(np.zeros(2))
                _layer_serialises = numba.threading_layer() == "workqueue"
                _layer_known = True
    return numba.threading_layer()


def run_kernel(serial: Callable[..., None], parallel: Callable[..., None], pieces: int, *args) -> None:
    """Call a layer kernel: ``serial`` on this thread when ``pieces`` is 0, else ``parallel``.

    Both take ``*args`` followed by the number of pieces per direction and whether BLAS
    is held to one thread for the kernel to plan with (True for ``parallel``). With
    fastrnn at one thread BLAS is held to one for ``serial`` too, which is told False.
    """
    threads = get_num_threads()
    if not pieces:
        # One thread means one core, BLAS included: a pool left at one thread per core
        # keeps spinning after each call, on the core another process or thread needs.
        # The kernel is told BLAS may use threads, as on the default path, so that it
        # cuts its products the same way and gives the same results bit for bit.
        with blas_single_threaded() if threads == 1 else nullcontext():
            serial(*args, 1, False)
        return
    with numba_threads(threads), blas_single_threaded():
        parallel(*args, pieces, True)


@contextmanager
def numba_threads(threads: int) -> Iterator[None]:
    """Run the block's parallel numba kernels on ``threads`` of numba's threads.

    numba's thread count is per calling thread, so concurrent callers do not clash; the
    caller's own setting is restored for its own numba code. With ``workqueue`` callers
    take turns.
    """
    threading_layer()
    callers_threads = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with _workqueue_lock if _layer_serialises else nullcontext():
            yield
    finally:
        numba.set_num_threads(callers_threads)
