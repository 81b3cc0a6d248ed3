"""Whole-sequence pieces shared by the gated cells (LSTM, GRU): weight gradients as one
GEMM per weight over every step, bias gradients as column sums, and the input gradient.

``dz`` is the gradient of a layer's gate pre-activations, (packed rows, D*G*H) as the
gated kernels leave it (rows as ``schedule`` lays them out); each direction owns a block
of ``gate_width`` columns.
"""

import numpy as np
from numba import carray

from .. import _scratch
from .._config import jit_helper
from .blas import NO_TRANS, TRANS, gemm_at
from .native import ARRAY, BACKWARD, INDEX, export

# The saved buffers of an inference call: one empty array, so that training and inference
# pass one array type and share one compilation.
_EMPTY = np.zeros(0, dtype=np.uint8)


def saved_bytes(call, name: str) -> np.ndarray:
    """A ``LayerCall``'s saved buffer (flat bytes), or the empty one when not kept."""
    return call.saved.get(name, _EMPTY)


# Inference on one thread projects the whole sequence's inputs with one GEMM per
# direction, as training does, when that buffer stays this small; past it, step by step
# into O(B * G * H) scratch. At (T, B, I, H) = (100, 1, 32, 64) the LSTM steps each read
# 64 KiB of W_ih and W_hh from L2 when projecting step by step, half of it for the projection.
INFERENCE_PROJECTION_BYTES = 16 * 2**20


def inference_gates(call, gates: int) -> np.ndarray:
    """The buffer for an inference call's input projection (bytes), or the empty one.

    A layer split over threads projects step by step: batch pieces' rows are not contiguous
    across steps, and where each thread runs one direction (bidirectional layers, BLAS held
    to one thread) the per-step products ran faster than one single-threaded GEMM per
    direction (Zen 4, float32 inference, bidirectional, in three alternated runs: at
    (T, B, I, H) = (100, 8, 64, 128) LSTM 0.69-0.87x the time, GRU 0.63-0.70x; 2 layers at
    B = 16: 0.86-0.88x and 0.78-0.90x; at B = 32, H = 256, where the projections outgrow
    ``INFERENCE_PROJECTION_BYTES``, nothing changes).
    Training keeps one GEMM per direction there: its per-step products came out no faster.
    """
    spec = call.spec
    nbytes = call.total * spec.directions * gates * spec.hidden_size * call.like.itemsize
    if call.pieces > 0 or nbytes > INFERENCE_PROJECTION_BYTES:
        return _EMPTY
    return _scratch.array(_scratch.INFERENCE_GATES, nbytes, np.uint8)  # the projection overwrites it whole


def gradient_buffer(call, name: str, slot: int) -> np.ndarray:
    """An uninitialised buffer the size of the saved ``name``, for backward to fill and use
    up within the call (``_scratch``'s ``slot``)."""
    return _scratch.array(slot, saved_bytes(call, name).size, np.uint8)


@jit_helper
def packed_size(array, float_size):
    """The number of floats in a packed weight held as bytes."""
    return array.size // float_size


@jit_helper
def zero_rows(array, offset, ld, rows, cols):
    zero = array.dtype.type(0.0)
    for r in range(rows):
        row = array[offset + r * ld : offset + r * ld + cols]
        for c in range(cols):
            row[c] = zero


def _column_sums_native(values, rows, cols, ld, sums):
    """sums[c] += sum over rows of values[r, c], rows ``ld`` apart."""
    matrix = carray(values, (rows - 1) * ld + cols if rows else 0)
    totals = carray(sums, cols)
    for r in range(rows):
        row = matrix[r * ld : r * ld + cols]
        for c in range(cols):
            totals[c] += row[c]


_column_sums = export(
    "column_sums", _column_sums_native, stages=(BACKWARD,), values=ARRAY, rows=INDEX, cols=INDEX, ld=INDEX, sums=ARRAY
)


@jit_helper
def column_sums(like, values, offset, rows, cols, ld, sums, sums_offset):
    """sums[sums_offset : sums_offset + cols] += column sums of a block of ``values`` (bytes
    of floats of ``like``'s dtype)."""
    float_size = like.itemsize
    if rows > 0 and cols > 0:
        _column_sums(
            like, values.ctypes.data + offset * float_size, rows, cols, ld,
            sums.ctypes.data + sums_offset * float_size,
        )


@jit_helper
def accumulate_product(float_size, a, a_offset, lda, b, b_offset, ldb, rows, m, n, c, c_offset, ldc):
    """c[m, n] += a[rows, m]^T @ b[rows, n] on byte arrays: a weight gradient summed over rows."""
    if rows > 0:
        gemm_at(
            float_size, TRANS, NO_TRANS, m, n, rows, a.ctypes.data + a_offset * float_size, lda,
            b.ctypes.data + b_offset * float_size, ldb, 1.0, c.ctypes.data + c_offset * float_size, ldc,
        )


@jit_helper
def recurrent_weight_gradient(
    float_size, dz, dz_offset, dz_ld, hidden, h0, blocks, count, output_size, width, direction, first_unit, units,
    grad_weight_hh,
):
    """grad_weight_hh[first_unit : first_unit + units] += sum_t dz_t^T h_prev(t), the state step t read.

    ``dz_offset`` is the column of unit 0 of this direction's block; ``hidden`` (packed
    rows, ``width``) holds every h_t, this direction's at ``direction * output_size``.
    One GEMM per row of ``blocks[:count]``, the direction's ``_schedule.recurrent_blocks``.
    """
    h_column = direction * output_size
    dz_column = dz_offset + first_unit
    for k in range(count):
        dz_row, from_initial, source_row, rows = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3]
        if from_initial:
            source, source_at, source_ld = h0, source_row * output_size, output_size
        else:
            source, source_at, source_ld = hidden, source_row * width + h_column, width
        accumulate_product(float_size, dz, dz_row * dz_ld + dz_column, dz_ld, source, source_at, source_ld, rows,
                           units, output_size, grad_weight_hh, first_unit * output_size, output_size)


@jit_helper
def input_gradient(float_size, dz, dz_offset, dz_ld, weight_ih, gate_width, features, first_row, rows, beta,
                   grad_input):
    """grad_input[r] (+)= dz[r, block] @ W_ih for rows ``first_row:first_row+rows``."""
    if rows > 0:
        gemm_at(
            float_size, NO_TRANS, NO_TRANS, rows, features, gate_width,
            dz.ctypes.data + (first_row * dz_ld + dz_offset) * float_size, dz_ld, weight_ih.ctypes.data, features,
            beta, grad_input.ctypes.data + first_row * features * float_size, features,
        )
