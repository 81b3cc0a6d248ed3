"""Elman RNN kernels: one call of ``forward_layer`` or ``backward_layer`` runs one layer,
all its directions, over the whole sequence; the functions they call each handle one
direction, or a batch piece of one.

The layer kernels take every array as bytes, with the float size, and only hand
addresses on: to OpenBLAS, and to the per-direction kernels (``recur``,
``backpropagate``, ``parameter_gradients``), which are compiled once per dtype as C
functions (see ``native``). So both dtypes share one build of each layer kernel.

Layout shared by every kernel (all arrays C-contiguous; the per-direction kernels see them flat),
in packed rows as ``schedule`` describes them (N rows; N = T*B when no sequence is shorter):
- ``layer_input``: (N, F).
- ``hidden``: (N, D*H); this direction owns columns ``offset : offset + H``.
  Forward writes the input projection there, then overwrites it in place with h_t, so
  the hidden states are the only per-step memory a layer keeps.
- ``grad_hidden``: same layout as ``hidden``; backward turns it in place into the
  gradient of the pre-activation.
"""

import numpy as np
from numba import carray, prange

from .. import _parallel
from .._config import jit, jit_helper, jit_parallel
from .activations import relu, tanh
from .blas import NO_TRANS, TRANS, gemm, gemm_at
from .native import ARRAY, BACKWARD, INDEX, INDICES, export
from .packed import PANEL_BYTES, pack_pair, packed_product, piece
from .schedule import backward_step, forward_step, row_piece, seed_final_gradients, take_final_states
from .workspace import keep_alive, uncounted

# Whole-sequence products (input projections, weight and input gradients) go through
# OpenBLAS; the per-step products go through ``packed_product``.
#
# OpenBLAS runs a product with m*n*k up to 100**3 through its direct small-matrix
# kernels: no packing and no thread pool; it hands a packed GEMM to its thread pool once
# m*n*k reaches 4 * 65536.
SMALL_KERNEL_WORK = 100**3
BLAS_THREADING_WORK = 4 * 65536
# Weight gradients sum over every (step, batch) row: a long inner dimension. Cut into
# chunks of a multiple of SUM_CHUNK_ALIGN rows that keep each product on the small-matrix
# kernels, they ran 1.2-1.5x faster single-threaded (64x64 and 128x128 gradients over
# 1600-4096 rows); chunks under SUM_CHUNK_MIN rows were no faster than one packed call.
SUM_CHUNK_ALIGN = 16
SUM_CHUNK_MIN = 32


@jit_helper
def _sum_chunk(m, n, k, blas_single_threaded):
    """Rows of the sum per BLAS call for an (m, n) gradient summed over k rows.

    Chunks only pay when BLAS runs on one thread anyway: a packed call may use the pool.
    """
    if blas_single_threaded or m * n * k < BLAS_THREADING_WORK:
        small_chunk = SMALL_KERNEL_WORK // max(m * n, 1) // SUM_CHUNK_ALIGN * SUM_CHUNK_ALIGN
        if small_chunk >= SUM_CHUNK_MIN:
            return min(small_chunk, max(k, 1))
    return max(k, 1)


@jit_helper
def _accumulate_gradient(a, a_offset, lda, b, b_offset, ldb, c, c_offset, ldc, m, n, k, blas_single_threaded):
    """c[m, n] += a[k, m].T @ b[k, n], summing over the k rows of ``a`` and ``b``."""
    chunk = _sum_chunk(m, n, k, blas_single_threaded)
    for start in range(0, k, chunk):
        gemm(
            TRANS, NO_TRANS, m, n, min(chunk, k - start), a, a_offset + start * lda, lda, b,
            b_offset + start * ldb, ldb, 1.0, c, c_offset, ldc,
        )


@jit_helper
def _activate_block(hidden, offset, ld, rows, cols, bias, use_relu):
    """h = act(z + bias) in place: adding the bias here saves a pass over the projections."""
    for r in range(rows):
        row = hidden[offset + r * ld : offset + r * ld + cols]
        if use_relu:
            for c in range(cols):
                row[c] = relu(row[c] + bias[c])
        else:
            for c in range(cols):
                row[c] = tanh(row[c] + bias[c])


@jit_helper
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


@jit_helper
def project_input(
    float_size, layer_input, feature_size, weight_ih, hidden, first_row, rows, hidden_size, width, offset
):
    """hidden[r, offset:offset+H] = layer_input[r] @ W_ih^T for rows ``first_row:first_row+rows``.

    Rows are (step, batch) pairs in time-major order: one GEMM covers many steps at once.
    The bias is added later, with the activation.
    """
    gemm_at(
        float_size, NO_TRANS, TRANS, rows, hidden_size, feature_size,
        layer_input.ctypes.data + first_row * feature_size * float_size, feature_size, weight_ih.ctypes.data,
        feature_size, 0.0, hidden.ctypes.data + (first_row * width + offset) * float_size, width,
    )


def _recur(
    layer_input, feature_size, packed_ih, packed_ih_size, bias_ih, bias_hh, project_steps, packed_hh,
    packed_hh_size, h0, hidden, batch_sizes, step_starts, lengths, steps, batch, total, first_row, rows,
    hidden_size, width, offset, reverse, use_relu, h_n,
):
    """h_t = act(z_t + b), z_t = x_t @ W_ih^T + h_{t-1} @ W_hh^T, for batch rows ``first_row:first_row+rows``.

    Batch rows never interact, so disjoint row ranges can run on different threads.
    Rows step as ``schedule`` says; a row that starts at a step reads h_0.
    ``h0`` and ``h_n`` are (B, H); without bias ``bias_ih`` and ``bias_hh`` are zeros.
    With ``project_steps`` each step first computes its own input projection (one small
    GEMM per step: a batch piece's rows are not contiguous across steps); otherwise
    ``hidden`` already holds the projections and ``packed_ih`` is not read.
    ``packed_ih`` and ``packed_hh`` are W_ih^T and W_hh^T from ``pack_bytes``.
    """
    layer_input = carray(layer_input, total * feature_size)
    packed_ih = carray(packed_ih, packed_ih_size)
    bias_ih = carray(bias_ih, hidden_size)
    bias_hh = carray(bias_hh, hidden_size)
    project_steps = project_steps != 0
    packed_hh = carray(packed_hh, packed_hh_size)
    h0 = carray(h0, batch * hidden_size)
    hidden = carray(hidden, total * width)
    batch_sizes = carray(batch_sizes, steps)
    step_starts = carray(step_starts, steps)
    lengths = carray(lengths, batch)
    reverse = reverse != 0
    use_relu = use_relu != 0
    h_n = carray(h_n, batch * hidden_size)
    bias = bias_ih + bias_hh
    workspace = np.empty(rows * (PANEL_BYTES // hidden.itemsize), dtype=hidden.dtype)
    scratch = uncounted(workspace)
    previous_at = 0
    previous_rows = 0  # rows of this piece that took the step run before
    for s in range(steps):
        _, active, carried, row_at = forward_step(batch_sizes, step_starts, steps, s, reverse, first_row, rows,
                                                  previous_rows)
        if active == 0:
            continue
        current = row_at * width + offset
        if project_steps:
            zero = hidden.dtype.type(0.0)
            for r in range(active):
                row = hidden[current + r * width : current + r * width + hidden_size]
                for c in range(hidden_size):
                    row[c] = zero
            packed_product(
                layer_input, row_at * feature_size, feature_size, packed_ih, hidden, current, width, active,
                feature_size, hidden_size, scratch,
            )
        if carried > 0:
            packed_product(
                hidden, previous_at, width, packed_hh, hidden, current, width, carried, hidden_size, hidden_size,
                scratch,
            )
        if active > carried:
            packed_product(
                h0, (first_row + carried) * hidden_size, hidden_size, packed_hh, hidden, current + carried * width,
                width, active - carried, hidden_size, hidden_size, scratch,
            )
        _activate_block(hidden, current, width, active, hidden_size, bias, use_relu)
        previous_at, previous_rows = current, active
    take_final_states(lengths, step_starts, first_row, rows, reverse, hidden, width, offset, h0, h_n, hidden_size)
    keep_alive(workspace)


def _backpropagate(
    packed_hh, packed_hh_size, hidden, grad_hidden, grad_h_n, batch_sizes, step_starts, lengths, steps, batch,
    total, first_row, rows, hidden_size, width, offset, reverse, use_relu, grad_h0,
):
    """Turn dLoss/dh_t into dLoss/dz_t in place, for batch rows ``first_row:first_row+rows``.

    On entry ``grad_hidden`` holds dLoss/dh_t from above; on exit it holds dLoss/dz_t for
    this direction's columns and rows; ``grad_h0`` rows are overwritten with dLoss/dh_0,
    which comes from the step that read h_0 (h_n itself for an empty sequence).
    dLoss/dh_{t-1} += dz_t @ W_hh takes W_hh as stored, untransposed, packed by ``pack_bytes``.
    """
    size = total * width
    packed_hh = carray(packed_hh, packed_hh_size)
    hidden = carray(hidden, size)
    grad_hidden = carray(grad_hidden, size)
    grad_h_n = carray(grad_h_n, batch * hidden_size)
    batch_sizes = carray(batch_sizes, steps)
    step_starts = carray(step_starts, steps)
    lengths = carray(lengths, batch)
    reverse = reverse != 0
    use_relu = use_relu != 0
    grad_h0 = carray(grad_h0, batch * hidden_size)
    workspace = np.empty(rows * (PANEL_BYTES // grad_hidden.itemsize), dtype=grad_hidden.dtype)
    scratch = uncounted(workspace)
    seed_final_gradients(lengths, step_starts, first_row, rows, reverse, grad_h_n, grad_hidden, width, offset, grad_h0,
                         hidden_size)
    for s in range(steps):
        _, active, carried, row_at, earlier_row = backward_step(batch_sizes, step_starts, steps, s, reverse,
                                                                first_row, rows)
        if active == 0:
            continue
        earlier_at = earlier_row * width + offset
        current = row_at * width + offset
        _scale_by_activation_grad(grad_hidden, hidden, current, width, active, hidden_size, use_relu)
        if carried > 0:
            packed_product(
                grad_hidden, current, width, packed_hh, grad_hidden, earlier_at, width, carried, hidden_size,
                hidden_size, scratch,
            )
        if active > carried:
            packed_product(
                grad_hidden, current + carried * width, width, packed_hh, grad_h0, (first_row + carried) * hidden_size,
                hidden_size, active - carried, hidden_size, hidden_size, scratch,
            )
    keep_alive(workspace)


# The recurrences through time hold the step products and the activations: the code
# that the serial and threaded layer kernels would otherwise each compile again.
_recur_compiled = export(
    "recur", _recur, layer_input=ARRAY, feature_size=INDEX, packed_ih=ARRAY, packed_ih_size=INDEX,
    bias_ih=ARRAY, bias_hh=ARRAY, project_steps=INDEX, packed_hh=ARRAY, packed_hh_size=INDEX, h0=ARRAY,
    hidden=ARRAY, batch_sizes=INDICES, step_starts=INDICES, lengths=INDICES, steps=INDEX, batch=INDEX, total=INDEX,
    first_row=INDEX, rows=INDEX, hidden_size=INDEX, width=INDEX, offset=INDEX, reverse=INDEX, use_relu=INDEX,
    h_n=ARRAY,
)
_backpropagate_compiled = export(
    "backpropagate", _backpropagate, stages=(BACKWARD,),
    packed_hh=ARRAY, packed_hh_size=INDEX, hidden=ARRAY,
    grad_hidden=ARRAY, grad_h_n=ARRAY, batch_sizes=INDICES, step_starts=INDICES, lengths=INDICES, steps=INDEX,
    batch=INDEX, total=INDEX, first_row=INDEX, rows=INDEX, hidden_size=INDEX, width=INDEX, offset=INDEX,
    reverse=INDEX, use_relu=INDEX, grad_h0=ARRAY,
)


@jit_helper
def recur(
    like, layer_input, feature_size, packed_ih, bias_ih, bias_hh, project_steps, packed_hh, h0, hidden, batch_sizes,
    step_starts, lengths, steps, batch, total, first_row, rows, hidden_size, width, offset, reverse, use_relu, h_n,
):
    """``_recur``, through its compiled C function for ``like``'s dtype; arrays as bytes."""
    float_size = like.itemsize
    _recur_compiled(
        like, layer_input.ctypes.data, feature_size, packed_ih.ctypes.data, packed_ih.size // float_size,
        bias_ih.ctypes.data, bias_hh.ctypes.data, project_steps, packed_hh.ctypes.data, packed_hh.size // float_size,
        h0.ctypes.data, hidden.ctypes.data, batch_sizes.ctypes.data, step_starts.ctypes.data, lengths.ctypes.data,
        steps, batch, total, first_row, rows, hidden_size, width, offset, reverse, use_relu, h_n.ctypes.data,
    )


@jit_helper
def backpropagate(
    like, packed_hh, hidden, grad_hidden, grad_h_n, batch_sizes, step_starts, lengths, steps, batch, total, first_row,
    rows, hidden_size, width, offset, reverse, use_relu, grad_h0,
):
    """``_backpropagate``, through its compiled C function for ``like``'s dtype; arrays as bytes."""
    float_size = like.itemsize
    _backpropagate_compiled(
        like, packed_hh.ctypes.data, packed_hh.size // float_size, hidden.ctypes.data, grad_hidden.ctypes.data,
        grad_h_n.ctypes.data, batch_sizes.ctypes.data, step_starts.ctypes.data, lengths.ctypes.data, steps, batch,
        total, first_row, rows, hidden_size, width, offset, reverse, use_relu, grad_h0.ctypes.data,
    )


def _parameter_gradients(
    layer_input, feature_size, h0, hidden, grad_hidden, blocks, block_count, batch, total, hidden_size, width, offset,
    first_unit, units, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, has_bias, blas_single_threaded,
):
    """Accumulate (+=) the gradients of hidden units ``first_unit:first_unit+units``.

    These are rows of W_ih, W_hh and the biases, so disjoint unit ranges can run on
    different threads. One GEMM per weight covers the whole sequence (W_hh: one per row
    of ``blocks``, the direction's ``_schedule.recurrent_blocks``): dW_hh = sum_t dz_t^T
    h_{t-1}, where h_{t-1} is the state step t consumed, and dW_ih = sum_t dz_t^T x_t.
    """
    size = total * width
    bias_size = hidden_size if has_bias else 0
    layer_input = carray(layer_input, total * feature_size)
    h0 = carray(h0, batch * hidden_size)
    hidden = carray(hidden, size)
    grad_hidden = carray(grad_hidden, size)
    blocks = carray(blocks, (block_count, 4))
    grad_weight_ih = carray(grad_weight_ih, hidden_size * feature_size)
    grad_weight_hh = carray(grad_weight_hh, hidden_size * hidden_size)
    grad_bias_ih = carray(grad_bias_ih, bias_size)
    grad_bias_hh = carray(grad_bias_hh, bias_size)
    has_bias = has_bias != 0
    blas_single_threaded = blas_single_threaded != 0
    dz = offset + first_unit
    for k in range(block_count):
        dz_row, from_initial, source_row, rows = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3]
        if from_initial:
            source, source_at, source_ld = h0, source_row * hidden_size, hidden_size
        else:
            source, source_at, source_ld = hidden, source_row * width + offset, width
        _accumulate_gradient(
            grad_hidden, dz_row * width + dz, width, source, source_at, source_ld, grad_weight_hh,
            first_unit * hidden_size, hidden_size, units, hidden_size, rows, blas_single_threaded,
        )
    _accumulate_gradient(
        grad_hidden, dz, width, layer_input, 0, feature_size, grad_weight_ih, first_unit * feature_size,
        feature_size, units, feature_size, total, blas_single_threaded,
    )
    if has_bias:
        # Both biases enter the pre-activation additively, so they share one gradient.
        # np.empty rather than np.zeros: the kernels use no np.zeros, whose compilation a
        # first call would pay for this one array.
        bias_grad = np.empty(units, dtype=grad_hidden.dtype)
        for c in range(units):
            bias_grad[c] = 0.0
        for r in range(total):
            row = grad_hidden[r * width + dz : r * width + dz + units]
            for c in range(units):
                bias_grad[c] += row[c]
        for c in range(units):
            grad_bias_ih[first_unit + c] += bias_grad[c]
            grad_bias_hh[first_unit + c] += bias_grad[c]


_parameter_gradients_compiled = export(
    "parameter_gradients", _parameter_gradients, stages=(BACKWARD,),
    layer_input=ARRAY, feature_size=INDEX, h0=ARRAY,
    hidden=ARRAY, grad_hidden=ARRAY, blocks=INDICES, block_count=INDEX, batch=INDEX,
    total=INDEX, hidden_size=INDEX, width=INDEX, offset=INDEX, first_unit=INDEX, units=INDEX,
    grad_weight_ih=ARRAY, grad_weight_hh=ARRAY, grad_bias_ih=ARRAY, grad_bias_hh=ARRAY, has_bias=INDEX,
    blas_single_threaded=INDEX,
)


@jit_helper
def parameter_gradients(
    like, layer_input, feature_size, h0, hidden, grad_hidden, blocks, block_count, batch, total, hidden_size, width,
    offset, first_unit, units, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, has_bias,
    blas_single_threaded,
):
    """``_parameter_gradients``, through its compiled C function for ``like``'s dtype."""
    _parameter_gradients_compiled(
        like, layer_input.ctypes.data, feature_size, h0.ctypes.data, hidden.ctypes.data,
        grad_hidden.ctypes.data, blocks.ctypes.data, block_count, batch, total, hidden_size,
        width, offset, first_unit, units, grad_weight_ih.ctypes.data, grad_weight_hh.ctypes.data,
        grad_bias_ih.ctypes.data, grad_bias_hh.ctypes.data, has_bias, blas_single_threaded,
    )


@jit_helper
def input_gradient(
    float_size, grad_hidden, width, offset, weight_ih, hidden_size, feature_size, first_row, rows, beta, grad_input
):
    """grad_input[r] (+)= dz[r, offset:offset+H] @ W_ih for rows ``first_row:first_row+rows``."""
    gemm_at(
        float_size, NO_TRANS, NO_TRANS, rows, feature_size, hidden_size,
        grad_hidden.ctypes.data + (first_row * width + offset) * float_size, width, weight_ih.ctypes.data,
        feature_size, beta, grad_input.ctypes.data + first_row * feature_size * float_size, feature_size,
    )


def _forward_layer(
    like, layer_input, feature_size, directions, weights_ih, weights_hh, biases_ih, biases_hh, h0, hidden,
    batch_sizes, step_starts, lengths, steps, batch, total, hidden_size, use_relu, h_n, pieces, blas_single_threaded,
):
    """Fill ``hidden`` (packed rows, D*H) and ``h_n`` (D, B*H) for one layer of D directions.

    ``weights_*`` and ``biases_*`` are pairs of flat arrays, one per direction; a
    unidirectional layer passes its arrays twice, so that both kinds of layer share one
    compiled kernel (a parallel compilation takes over a second). Each direction is cut
    into ``pieces`` batch ranges, which never interact. Compiled twice: serially, where
    ``prange`` is ``range`` (pieces=1), and with the pieces on numba's threads.
    """
    float_size = like.itemsize
    width = directions * hidden_size
    # On one thread, one GEMM per direction projects every step (BLAS may use its own
    # threads for it); on numba's threads each piece projects step by step (see below).
    project_steps = blas_single_threaded
    # Packed once per direction, here, and shared by its pieces: at (B, H) = (64, 1024) in
    # float64 a packed copy per piece (12 MB each) made the threaded steps 1.5x slower.
    packed_hh_first, packed_hh_second = pack_pair(like, weights_hh, directions, hidden_size, hidden_size, True)
    packed_ih_first, packed_ih_second = packed_hh_first, packed_hh_second  # not read unless projecting per step
    if project_steps:
        packed_ih_first, packed_ih_second = pack_pair(
            like, weights_ih, directions, feature_size, hidden_size, True
        )
    for task in prange(directions * pieces):
        direction = task // pieces
        first, rows = row_piece(lengths, batch, pieces, task % pieces)
        # Projecting step by step on numba's threads suits batch pieces, whose rows are not
        # contiguous across steps: for a bidirectional layer (T=100, B=16, H=128) that took
        # 0.50 ms where whole-sequence GEMMs on both threads at once took 0.48-0.72 ms.
        if not project_steps:
            project_input(
                float_size, layer_input, feature_size, weights_ih[direction], hidden, 0, total, hidden_size,
                width, direction * hidden_size,
            )
        recur(
            like, layer_input, feature_size, packed_ih_first if direction == 0 else packed_ih_second,
            biases_ih[direction], biases_hh[direction], project_steps,
            packed_hh_first if direction == 0 else packed_hh_second, h0[direction], hidden, batch_sizes, step_starts,
            lengths, steps, batch, total, first, rows, hidden_size, width, direction * hidden_size, direction == 1,
            use_relu, h_n[direction],
        )


def _backward_layer(
    like, layer_input, feature_size, directions, weights_ih, weights_hh, h0, hidden, grad_hidden, grad_h_n,
    grad_h0, batch_sizes, step_starts, recurrent_blocks, block_counts, lengths, steps, batch, total, hidden_size,
    use_relu, grads_weight_ih, grads_weight_hh, grads_bias_ih, grads_bias_hh, has_bias, grad_input, pieces,
    blas_single_threaded,
):
    """Backpropagate one layer of D directions: ``grad_hidden`` (packed rows, D*H) becomes dLoss/dz.

    Fills ``grad_h0`` (D, B*H) and ``grad_input`` (packed rows, F), and accumulates the
    parameter gradients. Pieces as in ``_forward_layer``: batch ranges through time first,
    then ranges of hidden units for the weight gradients and of rows for the input gradient.
    """
    float_size = like.itemsize
    width = directions * hidden_size
    tasks = directions * pieces
    packed_hh_first, packed_hh_second = pack_pair(like, weights_hh, directions, hidden_size, hidden_size, False)
    for task in prange(tasks):
        direction = task // pieces
        first, rows = row_piece(lengths, batch, pieces, task % pieces)
        backpropagate(
            like, packed_hh_first if direction == 0 else packed_hh_second, hidden, grad_hidden,
            grad_h_n[direction], batch_sizes, step_starts, lengths, steps, batch, total, first, rows, hidden_size,
            width, direction * hidden_size, direction == 1, use_relu, grad_h0[direction],
        )
    for task in prange(tasks):
        direction = task // pieces
        first_unit, units = piece(hidden_size, pieces, task % pieces)
        parameter_gradients(
            like, layer_input, feature_size, h0[direction], hidden, grad_hidden, recurrent_blocks[direction],
            block_counts[direction], batch, total, hidden_size, width, direction * hidden_size, first_unit, units,
            grads_weight_ih[direction], grads_weight_hh[direction], grads_bias_ih[direction],
            grads_bias_hh[direction], has_bias, blas_single_threaded,
        )
        # Every task also takes a share of the input gradient's rows, so the work balances.
        first, rows = piece(total, tasks, task)
        for source in range(directions):
            input_gradient(
                float_size, grad_hidden, width, source * hidden_size, weights_ih[source], hidden_size, feature_size,
                first, rows, 0.0 if source == 0 else 1.0, grad_input,
            )


forward_layer = jit(_forward_layer)
forward_layer_parallel = jit_parallel(_forward_layer)
backward_layer = jit(_backward_layer)
backward_layer_parallel = jit_parallel(_backward_layer)


def saved_widths(spec) -> dict[str, int]:
    """Per-step buffers training keeps besides every h_t: none, the hidden states suffice."""
    return {}


def forward_arguments(call, finals) -> tuple:
    """The forward kernels' arguments for one layer (a ``LayerCall``), but for the piece
    count and BLAS flag that ``run_kernel`` adds; ``finals`` is the (D, B, H) h_n of its directions.

    The call's own arrays (``layer_input``, each of ``initial``, ``hidden``) and each of
    ``finals`` are placed as they are: a prepared inference call (``_prepared``) finds
    them by identity, to put the next call's arrays in their places.
    """
    spec, params = call.spec, call.params
    return (
        call.like, call.layer_input, call.features,
        spec.directions, params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"],
        call.initial[0], call.hidden, call.batch_sizes, call.step_starts, call.lengths, call.steps, call.batch,
        call.total, spec.hidden_size, spec.kind.activation == "relu", finals[0],
    )


def forward(call, finals) -> None:
    """Run one layer (a ``LayerCall``); ``finals`` is the (D, B, H) h_n of its directions."""
    _parallel.run_kernel(forward_layer, forward_layer_parallel, call.pieces, *forward_arguments(call, finals))


def backward_arguments(call, grad_hidden, grad_finals, grad_initials, grads, grad_input) -> tuple:
    """The backward kernels' arguments for one layer (a ``LayerCall``), but for the piece
    count and BLAS flag that ``run_kernel`` adds. Every array is placed as it is given
    (the call's own, the saved buffers, the gradients), as in ``forward_arguments``.
    """
    spec, params = call.spec, call.params
    return (
        call.like, call.layer_input, call.features,
        spec.directions, params["weight_ih"], params["weight_hh"], call.initial[0], call.hidden, grad_hidden,
        grad_finals[0], grad_initials[0], call.batch_sizes, call.step_starts, call.recurrent_blocks, call.block_counts,
        call.lengths, call.steps, call.batch,
        call.total, spec.hidden_size, spec.kind.activation == "relu",
        grads["weight_ih"], grads["weight_hh"], grads["bias_ih"], grads["bias_hh"], spec.bias, grad_input,
    )


def backward(call, grad_hidden, grad_finals, grad_initials, grads, grad_input) -> None:
    """Differentiate one layer (a ``LayerCall``): ``grad_hidden`` (packed rows, D*H) is consumed in place."""
    _parallel.run_kernel(
        backward_layer, backward_layer_parallel, call.pieces,
        *backward_arguments(call, grad_hidden, grad_finals, grad_initials, grads, grad_input),
    )
