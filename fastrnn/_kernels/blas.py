"""Row-major GEMM on raw array offsets, called from inside numba kernels.

The kernels call the OpenBLAS that NumPy itself ships, through its CBLAS entry points.
Using NumPy's copy (rather than the SciPy copy behind ``np.dot`` in numba) keeps a single
OpenBLAS thread pool in the process: two pools spinning on the same cores made earlier
prototypes several times slower. Going through CBLAS directly also gives leading
dimensions and ``beta``, so kernels multiply column blocks in place and accumulate
gradients without temporary copies.
"""

import ctypes
import glob
import os

import llvmlite.binding as llvm
import numpy as np
from numba import types

from .._config import jit_helper

_ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112

_SYMBOLS = {
    "fastrnn_cblas_sgemm": "scipy_cblas_sgemm64_",
    "fastrnn_cblas_dgemm": "scipy_cblas_dgemm64_",
}


def _numpy_openblas_path() -> str:
    site = os.path.dirname(os.path.dirname(np.__file__))
    patterns = [
        os.path.join(site, "numpy.libs", "libscipy_openblas64_*.so*"),
        os.path.join(os.path.dirname(np.__file__), ".dylibs", "libscipy_openblas64_*.dylib"),
    ]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise ImportError(
        "fastrnn needs the OpenBLAS library bundled with NumPy's wheels "
        "(libscipy_openblas64_), but none was found next to numpy "
        f"{np.__version__} at {os.path.dirname(np.__file__)}. Install numpy with pip."
    )


def _register_symbols() -> ctypes.CDLL:
    library = ctypes.CDLL(_numpy_openblas_path())
    for alias, symbol in _SYMBOLS.items():
        address = ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value
        llvm.add_symbol(alias, address)
    return library


openblas = _register_symbols()


def _gemm_signature(scalar):
    i32, i64, ptr = types.int32, types.int64, types.voidptr
    return types.void(
        i32, i32, i32, i64, i64, i64, scalar, ptr, i64, ptr, i64, scalar, ptr, i64
    )


_cblas_sgemm = types.ExternalFunction("fastrnn_cblas_sgemm", _gemm_signature(types.float32))
_cblas_dgemm = types.ExternalFunction("fastrnn_cblas_dgemm", _gemm_signature(types.float64))


@jit_helper
def gemm(trans_a, trans_b, m, n, k, a, a_offset, lda, b, b_offset, ldb, beta, c, c_offset, ldc):
    """C[m, n] = op(A)[m, k] @ op(B)[k, n] + beta * C, on row-major blocks of flat arrays.

    ``a``, ``b`` and ``c`` are 1-D views of C-contiguous buffers of one dtype; each block
    starts at its element offset and steps rows by its leading dimension.
    """
    size = c.itemsize
    gemm_at(
        size, trans_a, trans_b, m, n, k, a.ctypes.data + a_offset * size, lda, b.ctypes.data + b_offset * size, ldb,
        beta, c.ctypes.data + c_offset * size, ldc,
    )


@jit_helper
def gemm_at(float_size, trans_a, trans_b, m, n, k, a_address, lda, b_address, ldb, beta, c_address, ldc):
    """``gemm`` on raw addresses of ``float_size``-byte floats: for kernels compiled once for both dtypes.

    ``a_address``, ``b_address`` and ``c_address`` point at the first element of each block.
    """
    if m == 0 or n == 0:
        return
    if float_size == 4:
        _cblas_sgemm(
            _ROW_MAJOR, np.int32(trans_a), np.int32(trans_b), m, n, k, np.float32(1.0), a_address, max(lda, 1),
            b_address, max(ldb, 1), np.float32(beta), c_address, max(ldc, 1),
        )
    else:
        _cblas_dgemm(
            _ROW_MAJOR, np.int32(trans_a), np.int32(trans_b), m, n, k, 1.0, a_address, max(lda, 1), b_address,
            max(ldb, 1), np.float64(beta), c_address, max(ldc, 1),
        )
