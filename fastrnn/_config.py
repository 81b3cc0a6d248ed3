"""Numba compilation options, decided once for every kernel in the package."""

import numba

# "contract" lets LLVM fuse multiply-adds and "reassoc" lets it vectorise reductions.
# NaN/inf handling is left exact on purpose: non-finite data must propagate as in torch.
FASTMATH_FLAGS = frozenset({"contract", "reassoc", "nsz"})

JIT_OPTIONS = {
    "cache": True,
    "nogil": True,  # kernels run on worker threads concurrently (directions, batch halves)
    "fastmath": set(FASTMATH_FLAGS),
    "error_model": "numpy",
}


def jit(function):
    """Compile ``function`` with the package's numba options."""
    return numba.njit(**JIT_OPTIONS)(function)
