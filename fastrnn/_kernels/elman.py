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

# Below this many multiply-adds per step (B*H*H) a BLAS call costs more than the
# arithmetic, so the step's product runs in a vectorised numba loop instead.
SMALL_STEP_WORK = 64 * 64 * 16


@jit
def _accumulate_product(src, src_offset, src_ld, matrix, dst, dst_offset, dst_ld, rows, inner, cols):
    """dst[rows, cols] += src[rows, inner] @ matrix[inner, cols] (matrix contiguous)."""
    for r in range(rows):
        src_row = src_offset + r * src_ld
        dst_row = dst_offset + r * dst_ld
        for i in range(inner):
            weight = src[src_row + i]
            matrix_row = i * cols
            for c in range(cols):
                dst[dst_row + c] += weight * matrix[matrix_row + c]


@jit
def _activate_block(hidden, offset, ld, rows, cols, use_relu):
    for r in range(rows):
        start = offset + r * ld
        if use_relu:
            for c in range(start, start + cols):
                hidden[c] = relu(hidden[c])
        else:
            for c in range(start, start + cols):
                hidden[c] = tanh(hidden[c])


@jit
def _scale_by_activation_grad(grad, hidden, offset, ld, rows, cols, use_relu):
    """grad *= act'(pre-activation), written in terms of the saved output h."""
    zero = grad.dtype.type(0.0)
    one = grad.dtype.type(1.0)
    for r in range(rows):
        start = offset + r * ld
        if use_relu:
            for c in range(start, start + cols):
                grad[c] = grad[c] if hidden[c] > zero else zero
        else:
            for c in range(start, start + cols):
                h = hidden[c]
                grad[c] = grad[c] * (one - h * h)


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
    small = batch * hidden_size * hidden_size < SMALL_STEP_WORK
    weight_hh_t = np.ascontiguousarray(
        weight_hh.reshape(hidden_size, hidden_size).T
    ).ravel() if small else weight_hh
    step_stride = batch * width
    previous = h0
    previous_offset = 0
    previous_ld = hidden_size
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        current = t * step_stride + offset
        if small:
            _accumulate_product(
                previous, previous_offset, previous_ld, weight_hh_t, hidden, current, width,
                batch, hidden_size, hidden_size,
            )
        else:
            gemm(
                NO_TRANS, TRANS, batch, hidden_size, hidden_size, previous, previous_offset,
                previous_ld, weight_hh, 0, hidden_size, 1.0, hidden, current, width,
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
    small = batch * hidden_size * hidden_size < SMALL_STEP_WORK
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
        if small:
            _accumulate_product(
                grad_hidden, current, width, weight_hh, target, target_offset, target_ld,
                batch, hidden_size, hidden_size,
            )
        else:
            gemm(
                NO_TRANS, NO_TRANS, batch, hidden_size, hidden_size, grad_hidden, current, width,
                weight_hh, 0, hidden_size, 1.0, target, target_offset, target_ld,
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
