"""Numba compilation options, decided once for every kernel in the package."""

import types

import numba
from numba.extending import register_jitable

# "contract" lets LLVM fuse multiply-adds and "reassoc" lets it vectorise reductions.
# NaN/inf handling is left exact on purpose: non-finite data must propagate as in torch.
FASTMATH_FLAGS = frozenset({"contract", "reassoc", "nsz"})

JIT_OPTIONS = {
    "cache": True,
    "nogil": True,  # kernels run on worker threads concurrently (directions, batch halves)
    "fastmath": set(FASTMATH_FLAGS),
    "error_model": "numpy",
}
# The kernels compiled as C functions (``_kernels.native``) take the same options; a C
# function has no GIL to release.
C_FUNCTION_OPTIONS = {key: JIT_OPTIONS[key] for key in ("cache", "fastmath", "error_model")}


def jit(function):
    """Compile ``function`` with the package's numba options."""
    return numba.njit(**JIT_OPTIONS)(function)


def jit_helper(function):
    """Compile a helper as part of each kernel that calls it, not as a kernel of its own.

    A kernel of its own is compiled once per signature its callers pass, and constants
    (BLAS flags, zero offsets) count as signatures of their own: three compilations per
    dtype for the GEMM wrapper, 0.1-0.2 s each. A helper is typed with plain int types.

    Helpers are not inlined into their callers' numba IR (LLVM still inlines the small
    ones): inlining every helper made the first forward and backward of an Elman layer,
    compiled from an empty cache, take 22-24 s against 16.5 s, with no measurable gain
    in speed. Only kernels call a helper, so numba builds it no Python or C entry point:
    lowering and emitting those for every helper made that first call about 6% longer.
    """
    options = {key: value for key, value in JIT_OPTIONS.items() if key in ("fastmath", "error_model")}
    return register_jitable(no_cpython_wrapper=True, no_cfunc_wrapper=True, **options)(function)


def jit_parallel(function):
    """Compile ``function`` with its ``prange`` loops spread over numba's threads.

    Numba hands a parallel loop to threads that are already running, in about a
    microsecond; waking a sleeping Python worker thread took 50-60 us on this project's
    virtual machines, more than a small layer's whole recurrence.
    """
    # numba's on-disk cache names a function's entries by its qualified name and keys them
    # by its bytecode, not by the compile options, so the parallel build of a function that
    # is also compiled serially must go under a name of its own, or one build loads the other.
    twin = types.FunctionType(
        function.__code__, function.__globals__, f"{function.__name__}_parallel", function.__defaults__,
        function.__closure__,
    )
    twin.__qualname__ = f"{function.__qualname__}_parallel"
    twin.__doc__ = function.__doc__
    return numba.njit(parallel=True, **JIT_OPTIONS)(twin)
