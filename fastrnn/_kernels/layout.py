"""Copies that change memory layout, for the weights the kernels want transposed."""

import numpy as np

from .._config import jit, jit_helper

# Tile edge in elements. NumPy's own transposing copy of a 1024x1024 float32 matrix took
# 3.5-7 ms: with a 4 KiB row stride, a column's elements all map to the same few cache
# sets. Square tiles, each target row filled from a strided view of a source column,
# took 0.40 ms at 1024 and 4.6 us at 128 with edge 16; edges 8, 32 and 64 took up to
# 1.8 ms at 1024. Indexing views from zero, rather than the flat arrays at computed
# offsets, made it 2.5-3x faster (likely because LLVM can then drop numba's
# negative-index checks).
TILE = 16


@jit_helper
def transpose_into(source, rows, cols, target):
    """target (cols, rows) = source (rows, cols).T, both flat and C-contiguous."""
    for row_start in range(0, rows, TILE):
        row_count = min(TILE, rows - row_start)
        for col_start in range(0, cols, TILE):
            for c in range(col_start, min(col_start + TILE, cols)):
                target_row = target[c * rows + row_start : c * rows + row_start + row_count]
                source_column = source[row_start * cols + c : (row_start + row_count) * cols : cols]
                for r in range(row_count):
                    target_row[r] = source_column[r]


@jit
def transposed(matrix, rows, cols):
    """A flat (rows, cols) matrix's transpose, as a new flat C-contiguous array."""
    result = np.empty(rows * cols, dtype=matrix.dtype)
    transpose_into(matrix, rows, cols, result)
    return result
