"""Copies that change memory layout, for the weights the kernels want transposed."""

import numpy as np

from .._config import jit

# Tile edge in elements. NumPy's own transposing copy of a 1024x1024 float32 matrix took
# 7 ms: with a 4 KiB row stride, a column's elements all map to the same few cache sets.
# Square 16x16 tiles, filled one target row at a time, took 0.9 ms; 8, 32 and 64 took
# 1.0-1.4 ms, and filling along source rows 1.4-3.4 ms.
TILE = 16
# A matrix this small sits in L1 whole, so tiles only add loop overhead: a plain pass
# along the source rows took 1.0 us for 64x64 float32 against 2.8 us in tiles (and 38
# against 11 us at 128x128, where the strided writes start to miss).
UNTILED_MAX_SIZE = 64 * 64


@jit
def transpose_into(source, rows, cols, target):
    """target (cols, rows) = source (rows, cols).T, both flat and C-contiguous."""
    if rows * cols <= UNTILED_MAX_SIZE:
        for r in range(rows):
            source_row = source[r * cols : (r + 1) * cols]
            for c in range(cols):
                target[c * rows + r] = source_row[c]
        return
    for row_start in range(0, rows, TILE):
        row_stop = min(row_start + TILE, rows)
        for col_start in range(0, cols, TILE):
            for c in range(col_start, min(col_start + TILE, cols)):
                target_row = target[c * rows : (c + 1) * rows]
                for r in range(row_start, row_stop):
                    target_row[r] = source[r * cols + c]


@jit
def transposed(matrix, rows, cols):
    """A flat (rows, cols) matrix's transpose, as a new flat C-contiguous array."""
    result = np.empty(rows * cols, dtype=matrix.dtype)
    transpose_into(matrix, rows, cols, result)
    return result
