"""Elman RNN kernels: one call runs one layer-direction over the whole sequence.

Layout shared by every kernel (all arrays C-contiguous, passed flat):
- ``layer_input``: (T*B, F) rows in time-major order.
- ``hidden``: (T, B, D*H); this direction owns columns ``offset : offset + H``.
  Forward writes the input projection there, then overwrites it in place with h_t, so
  the hidden states are the only per-step memory a layer keeps.
- ``grad_hidden``: same layout as ``hidden``; backward turns it in place into the
  gradient of the pre-activation.
"""

import numpy as np

from .._config import jit
from .activations import relu, tanh
from .blas import NO_TRANS, TRANS, gemm

# With fewer batch rows than this, the step's product is a few matrix-vector products
# and a vectorised numba loop beats a BLAS call (measured: B=1, H=128-256).
BLAS_MIN_ROWS = 4
# OpenBLAS hands a GEMM to its thread pool once m*n*k reaches 4 * 65536; for a per-step
# product that size, waking the pool costs more than it saves, so such steps are split
# into row chunks that stay single-threaded. Past LARGE_STEP_WORK the pool pays off.
BLAS_THREADING_WORK = 4 * 65536
LARGE_STEP_WORK = 8 * 1024 * 1024


@jit
def _step_product(src, src_offset, src_ld, matrix, small_matrix, trans, dst, dst_offset, dst_ld, rows, size):
    """dst[rows, size] += src[rows, size] @ op(matrix), op = transpose when ``trans``.

    ``small_matrix`` is op(matrix)^T laid out for :func:`_accumulate_product`.
    """
    if rows < BLAS_MIN_ROWS:
        _accumulate_product(src, src_offset, src_ld, small_matrix, dst, dst_offset, dst_ld, rows, size, size)
        return
    work = rows * size * size
    chunk = rows if work >= LARGE_STEP_WORK else max(1, (BLAS_THREADING_WORK - 1) // (size * size))
    for start in range(0, rows, chunk):
        count = min(chunk, rows - start)
        gemm(
            NO_TRANS, trans, count, size, size, src, src_offset + start * src_ld, src_ld,
            matrix, 0, size, 1.0, dst, dst_offset + start * dst_ld, dst_ld,
        )


@jit
def _accumulate_product(src, src_offset, src_ld, matrix, dst, dst_offset, dst_ld, rows, inner, cols):
    """dst[rows, cols] += src[rows, inner] @ matrix[cols, inner].T, for small matrices.

    Four output columns share each pass over a source row, so every loaded source value
    feeds four vectorised dot products. Rows are sliced before indexing from zero: that
    lets LLVM drop numba's negative-index check and vectorise.
    """
    zero = dst.dtype.type(0.0)
    for r in range(rows):
        src_row = src[src_offset + r * src_ld : src_offset + r * src_ld + inner]
        dst_row = dst[dst_offset + r * dst_ld : dst_offset + r * dst_ld + cols]
        c = 0
        while c + 4 <= cols:
            m0 = matrix[c * inner : (c + 1) * inner]
            m1 = matrix[(c + 1) * inner : (c + 2) * inner]
            m2 = matrix[(c + 2) * inner : (c + 3) * inner]
            m3 = matrix[(c + 3) * inner : (c + 4) * inner]
            a0 = a1 = a2 = a3 = zero
            for k in range(inner):
                value = src_row[k]
                a0 += value * m0[k]
                a1 += value * m1[k]
                a2 += value * m2[k]
                a3 += value * m3[k]
            dst_row[c] += a0
            dst_row[c + 1] += a1
            dst_row[c + 2] += a2
            dst_row[c + 3] += a3
            c += 4
        while c < cols:
            m0 = matrix[c * inner : (c + 1) * inner]
            a0 = zero
            for k in range(inner):
                a0 += src_row[k] * m0[k]
            dst_row[c] += a0
            c += 1


@jit
def _activate_block(hidden, offset, ld, rows, cols, use_relu):
    for r in range(rows):
        row = hidden[offset + r * ld : offset + r * ld + cols]
        if use_relu:
            for c in range(cols):
                row[c] = relu(row[c])
        else:
            for c in range(cols):
                row[c] = tanh(row[c])


@jit
def _scale_by_activation_grad(grad, hidden, offset, ld, rows, cols, use_relu):
    """grad *= act'(pre-activation), written in terms of the saved output h."""
    zero = grad.dtype.type(0.0)
    one = grad.dtype.type(1.0)
    for r in range(rows):
        grad_row = grad[offset + r * ld : offset + r * ld + cols]
        hidden_row = hidden[offset + r * ld : offset + r * ld + cols]
        if use_relu:
            for c in range(cols):
                grad_row[c] = grad_row[c] if hidden_row[c] > zero else zero
        else:
            for c in range(cols):
                h = hidden_row[c]
                grad_row[c] = grad_row[c] * (one - h * h)


@jit
def forward_direction(
    layer_input, feature_size, weight_ih, weight_hh, bias, has_bias, h0, hidden, steps, batch,
    width, offset, reverse, use_relu, h_n,
):
    """Run one direction of one layer over all steps; returns nothing, fills ``hidden``/``h_n``."""
    hidden_size = h0.size // batch if batch > 0 else 0
    rows = steps * batch
    # Whole-sequence input projection, outside the recurrent loop.
    if has_bias:
        for r in range(rows):
            start = r * width + offset
            for c in range(hidden_size):
                hidden[start + c] = bias[c]
    gemm(
        NO_TRANS, TRANS, rows, hidden_size, feature_size, layer_input, 0, feature_size,
        weight_ih, 0, feature_size, 1.0 if has_bias else 0.0, hidden, offset, width,
    )
    step_stride = batch * width
    previous = h0
    previous_offset = 0
    previous_ld = hidden_size
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        current = t * step_stride + offset
        _step_product(
            previous, previous_offset, previous_ld, weight_hh, weight_hh, TRANS, hidden, current,
            width, batch, hidden_size,
        )
        _activate_block(hidden, current, width, batch, hidden_size, use_relu)
        previous = hidden
        previous_offset = current
        previous_ld = width
    for b in range(batch):
        for c in range(hidden_size):
            h_n[b * hidden_size + c] = previous[previous_offset + b * previous_ld + c]


@jit
def backward_direction(
    layer_input, feature_size, weight_hh, h0, hidden, grad_hidden, grad_h_n, steps, batch,
    width, offset, reverse, use_relu, grad_weight_ih, grad_weight_hh, grad_bias_ih,
    grad_bias_hh, has_bias, grad_h0,
):
    """Backpropagate one direction of one layer through time.

    On entry ``grad_hidden`` holds dLoss/dh_t from above; on exit it holds dLoss/dz_t for
    this direction's columns. Parameter gradients are accumulated (+=); ``grad_h0`` is
    overwritten.
    """
    hidden_size = grad_h0.size // batch if batch > 0 else 0
    step_stride = batch * width
    # dh_{t-1} = dz_t @ W_hh: the small-batch product wants W_hh's columns as rows.
    if batch < BLAS_MIN_ROWS:
        weight_hh_t = np.ascontiguousarray(weight_hh.reshape(hidden_size, hidden_size).T).ravel()
    else:
        weight_hh_t = weight_hh
    last = 0 if reverse else steps - 1
    last_start = last * step_stride + offset
    for b in range(batch):
        for c in range(hidden_size):
            grad_hidden[last_start + b * width + c] += grad_h_n[b * hidden_size + c]
    for s in range(steps):
        t = s if reverse else steps - 1 - s
        current = t * step_stride + offset
        _scale_by_activation_grad(grad_hidden, hidden, current, width, batch, hidden_size, use_relu)
        if s < steps - 1:
            earlier = (t + 1 if reverse else t - 1) * step_stride + offset
            target, target_offset, target_ld = grad_hidden, earlier, width
        else:
            grad_h0[:] = 0.0
            target, target_offset, target_ld = grad_h0, 0, hidden_size
        _step_product(
            grad_hidden, current, width, weight_hh, weight_hh_t, NO_TRANS, target, target_offset,
            target_ld, batch, hidden_size,
        )
    # Whole-sequence weight gradients: one GEMM each instead of one per step.
    # dW_hh = sum_t dz_t^T h_{t-1}, where h_{t-1} is the state the step consumed.
    later_rows = (steps - 1) * batch
    if reverse:
        dz_offset, h_offset, first = offset, step_stride + offset, steps - 1
    else:
        dz_offset, h_offset, first = step_stride + offset, offset, 0
    gemm(
        TRANS, NO_TRANS, hidden_size, hidden_size, later_rows, grad_hidden, dz_offset, width,
        hidden, h_offset, width, 1.0, grad_weight_hh, 0, hidden_size,
    )
    gemm(
        TRANS, NO_TRANS, hidden_size, hidden_size, batch, grad_hidden,
        first * step_stride + offset, width, h0, 0, hidden_size, 1.0, grad_weight_hh, 0,
        hidden_size,
    )
    gemm(
        TRANS, NO_TRANS, hidden_size, feature_size, steps * batch, grad_hidden, offset, width,
        layer_input, 0, feature_size, 1.0, grad_weight_ih, 0, feature_size,
    )
    if has_bias:
        # Both biases enter the pre-activation additively, so they share one gradient.
        bias_grad = np.zeros(hidden_size, dtype=grad_hidden.dtype)
        for r in range(steps * batch):
            start = r * width + offset
            for c in range(hidden_size):
                bias_grad[c] += grad_hidden[start + c]
        for c in range(hidden_size):
            grad_bias_ih[c] += bias_grad[c]
            grad_bias_hh[c] += bias_grad[c]


@jit
def input_gradient(grad_hidden, width, offset, weight_ih, hidden_size, feature_size, rows, beta, grad_input):
    """grad_input (+)= dz[:, offset:offset+H] @ W_ih, over all steps at once."""
    gemm(
        NO_TRANS, NO_TRANS, rows, feature_size, hidden_size, grad_hidden, offset, width,
        weight_ih, 0, feature_size, beta, grad_input, 0, feature_size,
    )
