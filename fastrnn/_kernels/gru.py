"""GRU kernels: one call of ``forward_layer`` or ``backward_layer`` runs one layer, all
its directions, over the whole sequence; ``recur`` and ``backpropagate`` run one
direction, or a batch piece of one, through time, compiled once per dtype as C functions
(see ``native``), with every per-step product on the packed tile kernel.

Gates in torch's order r, z, n, with torch's formula: n = tanh(x W_in^T + b_in +
r (h W_hn^T + b_hn)), h' = (1 - z) n + z h. The hidden product h W_hh^T of a step goes to
scratch, apart from the input projection, because r multiplies only its n block.

What training keeps per step and batch row, per direction (``saved_widths``), besides
h_t (H floats): r, z and n (3H floats) and h W_hn^T + b_hn (H floats), which dr needs.
So 4 * 5H bytes in float32, 8 * 5H in float64. Backward reads them without writing, into
buffers of its own of the same sizes for the gradients of the input-side pre-activations
and of the hidden-side n block, so a forward can be differentiated more than once.
Inference keeps none of it.

Layout (C-contiguous, packed rows as ``schedule`` describes, N of them): ``layer_input``
(N, F); ``hidden`` (N, D*H); ``gates`` (N, D*3H); ``hidden_n`` (N, D*H); direction d owns
the d-th block of columns of each.
"""

import numpy as np
from numba import carray, prange

from .. import _parallel, _scratch
from .._config import jit, jit_parallel
from .activations import sigmoid, tanh
from .blas import NO_TRANS, TRANS, gemm_at
from .gated import (
    accumulate_product,
    column_sums,
    gradient_buffer,
    inference_gates,
    input_gradient,
    packed_size,
    recurrent_weight_gradient,
    saved_bytes,
    zero_rows,
)
from .native import ARRAY, BACKWARD, INDEX, INDICES, export
from .packed import PANEL_BYTES, pack_pair, packed_product, piece
from .schedule import backward_step, forward_step, row_piece, seed_final_gradients, take_final_states
from .workspace import keep_alive, split, uncounted

GATES = 3


def _recur(
    layer_input, features, packed_ih, packed_ih_size, bias_ih, bias_hh, project_steps, packed_hh, packed_hh_size,
    h0, hidden, gates, hidden_n, keep, gates_given, batch_sizes, step_starts, lengths, steps, batch, total,
    first_row, rows, hidden_size, directions, direction, h_n,
):
    """Run batch rows ``first_row:first_row+rows`` of one direction through their steps.

    Rows step as ``schedule`` says; a row that starts at a step reads h_0. With
    ``project_steps`` each step first computes its own input projection from
    ``packed_ih``; otherwise ``gates`` already holds x_t W_ih^T. Without ``gates_given`` the
    gates, and without ``keep`` h W_hn^T + b_hn, live in scratch.
    """
    sequence = total * directions
    kept = sequence if keep else 0
    layer_input = carray(layer_input, total * features)
    packed_ih = carray(packed_ih, packed_ih_size)
    bias_ih = carray(bias_ih, GATES * hidden_size)
    bias_hh = carray(bias_hh, GATES * hidden_size)
    project_steps = project_steps != 0
    packed_hh = carray(packed_hh, packed_hh_size)
    h0 = carray(h0, batch * hidden_size)
    hidden = carray(hidden, sequence * hidden_size)
    gates = carray(gates, sequence * GATES * hidden_size if gates_given else 0)
    hidden_n = carray(hidden_n, kept * hidden_size)
    keep = keep != 0
    gates_given = gates_given != 0
    batch_sizes = carray(batch_sizes, steps)
    step_starts = carray(step_starts, steps)
    lengths = carray(lengths, batch)
    h_n = carray(h_n, batch * hidden_size)
    size = hidden_size
    gate_size = GATES * size
    dtype = hidden.dtype
    one = dtype.type(1.0)
    # r and z take both biases as one sum; n's hidden bias stays inside the product with r.
    bias_r = bias_ih[:size] + bias_hh[:size]
    bias_z = bias_ih[size : 2 * size] + bias_hh[size : 2 * size]
    bias_in, bias_hn = bias_ih[2 * size :], bias_hh[2 * size :]
    scratch_size = rows * (PANEL_BYTES // hidden.itemsize)
    own_gates = 0 if gates_given else rows * gate_size
    own_n = 0 if keep else rows * size
    workspace = np.empty(scratch_size + rows * gate_size + own_gates + own_n, dtype=dtype)
    scratch, free = split(uncounted(workspace), scratch_size)
    products, free = split(free, rows * gate_size)
    out_ld = directions * size
    if gates_given:
        gate_buffer, gate_ld = gates, directions * gate_size
    else:
        gate_buffer, free = split(free, own_gates)
        gate_ld = gate_size
    if keep:
        n_buffer, n_ld = hidden_n, directions * size
    else:
        n_buffer, free = split(free, own_n)
        n_ld = size
    previous_at = 0
    previous_rows = 0  # rows of this piece that took the step run before
    reverse = direction == 1
    for s in range(steps):
        _, active, carried, row_at = forward_step(batch_sizes, step_starts, steps, s, reverse, first_row, rows,
                                                  previous_rows)
        if active == 0:
            continue
        gate_at = row_at * gate_ld + direction * gate_size if gates_given else 0
        n_at = row_at * n_ld + direction * size if keep else 0
        out_at = row_at * out_ld + direction * size
        if project_steps:
            zero_rows(gate_buffer, gate_at, gate_ld, active, gate_size)
            packed_product(
                layer_input, row_at * features, features, packed_ih, gate_buffer, gate_at, gate_ld, active, features,
                gate_size, scratch,
            )
        zero_rows(products, 0, gate_size, active, gate_size)
        if carried > 0:
            packed_product(hidden, previous_at, out_ld, packed_hh, products, 0, gate_size, carried, size, gate_size,
                           scratch)
        if active > carried:
            packed_product(h0, (first_row + carried) * size, size, packed_hh, products, carried * gate_size,
                           gate_size, active - carried, size, gate_size, scratch)
        for r in range(active):
            at = gate_at + r * gate_ld
            # One view per gate block, each indexed from 0, and loops of a few arrays each:
            # with more, LLVM gives up the run-time checks that the views do not overlap,
            # and with them the vector code (as in the LSTM kernels).
            gate_r = gate_buffer[at : at + size]
            gate_z = gate_buffer[at + size : at + 2 * size]
            gate_n = gate_buffer[at + 2 * size : at + gate_size]
            product_r = products[r * gate_size :][:size]
            product_z = products[r * gate_size + size :][:size]
            product_n = products[r * gate_size + 2 * size :][:size]
            if r < carried:
                before = hidden[previous_at + r * out_ld :][:size]
            else:
                before = h0[(first_row + r) * size :][:size]
            hidden_part = n_buffer[n_at + r * n_ld :][:size]
            result = hidden[out_at + r * out_ld :][:size]
            for j in range(size):
                gate_r[j] = sigmoid(gate_r[j] + product_r[j] + bias_r[j])
            for j in range(size):
                gate_z[j] = sigmoid(gate_z[j] + product_z[j] + bias_z[j])
            for j in range(size):
                hidden_part[j] = product_n[j] + bias_hn[j]
            for j in range(size):
                gate_n[j] = tanh(gate_n[j] + bias_in[j] + gate_r[j] * hidden_part[j])
            for j in range(size):
                result[j] = (one - gate_z[j]) * gate_n[j] + gate_z[j] * before[j]
        previous_at, previous_rows = out_at, active
    take_final_states(lengths, step_starts, first_row, rows, reverse, hidden, out_ld, direction * size, h0, h_n, size)
    keep_alive(workspace)


def _backpropagate(
    packed_hh, packed_hh_size, h0, hidden, gates, hidden_n, grad_hidden, grad_h_n, batch_sizes, step_starts,
    lengths, steps, batch, total, first_row, rows, hidden_size, directions, direction, grad_h0, grad_gates,
    grad_hidden_n,
):
    """Backpropagate batch rows ``first_row:first_row+rows`` of one direction through time.

    On entry ``grad_hidden`` holds dLoss/dh_t from above; on exit ``grad_gates`` holds the
    gradient of the input-side pre-activations (r, z, n) and ``grad_hidden_n`` that of the
    hidden-side n block, r dLoss/dn_pre, laid out as ``gates`` and ``hidden_n``, which are
    only read. ``packed_hh`` is W_hh as stored. Steps run in the reverse of the forward's
    order; a row's dLoss/dh_0 comes from the step that read h_0.
    """
    sequence = total * directions
    packed_hh = carray(packed_hh, packed_hh_size)
    h0 = carray(h0, batch * hidden_size)
    hidden = carray(hidden, sequence * hidden_size)
    gates = carray(gates, sequence * GATES * hidden_size)
    hidden_n = carray(hidden_n, sequence * hidden_size)
    grad_hidden = carray(grad_hidden, sequence * hidden_size)
    grad_h_n = carray(grad_h_n, batch * hidden_size)
    batch_sizes = carray(batch_sizes, steps)
    step_starts = carray(step_starts, steps)
    lengths = carray(lengths, batch)
    grad_h0 = carray(grad_h0, batch * hidden_size)
    grad_gates = carray(grad_gates, sequence * GATES * hidden_size)
    grad_hidden_n = carray(grad_hidden_n, sequence * hidden_size)
    size = hidden_size
    gate_size = GATES * size
    dtype = gates.dtype
    one = dtype.type(1.0)
    scratch_size = rows * (PANEL_BYTES // gates.itemsize)
    workspace = np.empty(scratch_size + rows * gate_size, dtype=dtype)
    scratch, hidden_side = split(uncounted(workspace), scratch_size)
    gate_ld, n_ld, out_ld = directions * gate_size, directions * size, directions * size
    reverse = direction == 1
    seed_final_gradients(lengths, step_starts, first_row, rows, reverse, grad_h_n, grad_hidden, out_ld,
                         direction * size, grad_h0, size)
    for s in range(steps):
        _, active, carried, row_at, earlier_row = backward_step(batch_sizes, step_starts, steps, s, reverse,
                                                                first_row, rows)
        if active == 0:
            continue
        earlier_at = earlier_row * out_ld + direction * size
        gate_at = row_at * gate_ld + direction * gate_size
        n_at = row_at * n_ld + direction * size
        out_at = row_at * out_ld + direction * size
        for r in range(active):
            gate = gates[gate_at + r * gate_ld : gate_at + r * gate_ld + gate_size]
            grad_gate = grad_gates[gate_at + r * gate_ld : gate_at + r * gate_ld + gate_size]
            hidden_part = hidden_n[n_at + r * n_ld :][:size]
            grad_hidden_part = grad_hidden_n[n_at + r * n_ld :][:size]
            grad_h = grad_hidden[out_at + r * out_ld :][:size]
            if r < carried:
                before = hidden[earlier_at + r * out_ld :][:size]
                grad_before = grad_hidden[earlier_at + r * out_ld :][:size]
            else:
                before = h0[(first_row + r) * size :][:size]
                grad_before = grad_h0[(first_row + r) * size :][:size]
            reset, update, new = gate[:size], gate[size : 2 * size], gate[2 * size :]
            grad_r, grad_z, grad_n = grad_gate[:size], grad_gate[size : 2 * size], grad_gate[2 * size :]
            side = hidden_side[r * gate_size : (r + 1) * gate_size]
            side_r, side_z, side_n = side[:size], side[size : 2 * size], side[2 * size :]
            # Loops of a few arrays each, so that each is vector code (see ``_recur``).
            for j in range(size):
                grad_n[j] = grad_h[j] * (one - update[j]) * (one - new[j] * new[j])
            for j in range(size):
                grad_r[j] = grad_n[j] * hidden_part[j] * reset[j] * (one - reset[j])
            for j in range(size):
                grad_z[j] = grad_h[j] * update[j] * (one - update[j])
            for j in range(size):
                grad_z[j] *= before[j] - new[j]
            for j in range(size):
                grad_hidden_part[j] = grad_n[j] * reset[j]
            for j in range(size):
                side_r[j] = grad_r[j]
            for j in range(size):
                side_z[j] = grad_z[j]
            for j in range(size):
                side_n[j] = grad_hidden_part[j]
            for j in range(size):
                grad_before[j] += grad_h[j] * update[j]
        if carried > 0:
            packed_product(hidden_side, 0, gate_size, packed_hh, grad_hidden, earlier_at, out_ld, carried, gate_size,
                           size, scratch)
        if active > carried:
            packed_product(hidden_side, carried * gate_size, gate_size, packed_hh, grad_h0,
                           (first_row + carried) * size, size, active - carried, gate_size, size, scratch)
    keep_alive(workspace)


_recur_compiled = export(
    "gru_recur", _recur, layer_input=ARRAY, features=INDEX, packed_ih=ARRAY, packed_ih_size=INDEX,
    bias_ih=ARRAY, bias_hh=ARRAY, project_steps=INDEX, packed_hh=ARRAY, packed_hh_size=INDEX, h0=ARRAY,
    hidden=ARRAY, gates=ARRAY, hidden_n=ARRAY, keep=INDEX, gates_given=INDEX, batch_sizes=INDICES,
    step_starts=INDICES, lengths=INDICES, steps=INDEX, batch=INDEX, total=INDEX, first_row=INDEX, rows=INDEX,
    hidden_size=INDEX, directions=INDEX, direction=INDEX, h_n=ARRAY,
)
_backpropagate_compiled = export(
    "gru_backpropagate", _backpropagate, stages=(BACKWARD,),
    packed_hh=ARRAY, packed_hh_size=INDEX, h0=ARRAY, hidden=ARRAY,
    gates=ARRAY, hidden_n=ARRAY, grad_hidden=ARRAY, grad_h_n=ARRAY, batch_sizes=INDICES, step_starts=INDICES,
    lengths=INDICES, steps=INDEX, batch=INDEX, total=INDEX, first_row=INDEX, rows=INDEX, hidden_size=INDEX,
    directions=INDEX, direction=INDEX, grad_h0=ARRAY, grad_gates=ARRAY, grad_hidden_n=ARRAY,
)


def _forward_layer(
    like, layer_input, features, directions, weights_ih, weights_hh, biases_ih, biases_hh, h0, hidden, gates,
    hidden_n, keep, batch_sizes, step_starts, lengths, steps, batch, total, hidden_size, h_n, pieces,
    blas_single_threaded,
):
    """Fill ``hidden`` and ``h_n`` (and with ``keep`` the saved buffers) for one layer.

    Pairs and pieces as in the Elman kernels. In training on one thread one GEMM per
    direction projects every step into ``gates``; otherwise each piece projects step by step.
    """
    float_size = like.itemsize
    gate_size = GATES * hidden_size
    gates_given = gates.size > 0
    # One GEMM per direction projects every step at once when a task runs a whole direction;
    # batch pieces, whose rows are not contiguous across steps, project step by step.
    hoisted = gates_given and pieces == 1
    project_steps = not hoisted
    packed_hh_first, packed_hh_second = pack_pair(like, weights_hh, directions, hidden_size, gate_size, True)
    packed_ih_first, packed_ih_second = packed_hh_first, packed_hh_second  # not read unless projecting per step
    if project_steps:
        packed_ih_first, packed_ih_second = pack_pair(like, weights_ih, directions, features, gate_size, True)
    for task in prange(directions * pieces):
        direction = task // pieces
        first, rows = row_piece(lengths, batch, pieces, task % pieces)
        if hoisted:
            gemm_at(
                float_size, NO_TRANS, TRANS, total, gate_size, features, layer_input.ctypes.data, features,
                weights_ih[direction].ctypes.data, features, 0.0,
                gates.ctypes.data + direction * gate_size * float_size, directions * gate_size,
            )
        packed_ih = packed_ih_first if direction == 0 else packed_ih_second
        packed_hh = packed_hh_first if direction == 0 else packed_hh_second
        _recur_compiled(
            like, layer_input.ctypes.data, features, packed_ih.ctypes.data, packed_size(packed_ih, float_size),
            biases_ih[direction].ctypes.data, biases_hh[direction].ctypes.data, project_steps,
            packed_hh.ctypes.data, packed_size(packed_hh, float_size), h0[direction].ctypes.data, hidden.ctypes.data,
            gates.ctypes.data, hidden_n.ctypes.data, keep, gates_given, batch_sizes.ctypes.data,
            step_starts.ctypes.data, lengths.ctypes.data, steps, batch, total, first, rows, hidden_size, directions,
            direction, h_n[direction].ctypes.data,
        )


def _backward_layer(
    like, layer_input, features, directions, weights_ih, weights_hh, h0, hidden, gates, hidden_n, grad_hidden,
    grad_h_n, grad_h0, batch_sizes, step_starts, recurrent_blocks, block_counts, lengths, steps, batch, total,
    hidden_size, grads_weight_ih, grads_weight_hh, grads_bias_ih, grads_bias_hh, has_bias, grad_input, grad_gates,
    grad_hidden_n, pieces, blas_single_threaded,
):
    """Backpropagate one layer: through time by batch pieces, then the whole-sequence
    products (weight gradients, bias sums, the input gradient) by unit and row ranges."""
    float_size = like.itemsize
    size = hidden_size
    gate_size = GATES * size
    gate_ld = directions * gate_size
    packed_hh_first, packed_hh_second = pack_pair(like, weights_hh, directions, gate_size, size, False)
    tasks = directions * pieces
    for task in prange(tasks):
        direction = task // pieces
        first, rows = row_piece(lengths, batch, pieces, task % pieces)
        packed_hh = packed_hh_first if direction == 0 else packed_hh_second
        _backpropagate_compiled(
            like, packed_hh.ctypes.data, packed_size(packed_hh, float_size), h0[direction].ctypes.data,
            hidden.ctypes.data, gates.ctypes.data, hidden_n.ctypes.data, grad_hidden.ctypes.data,
            grad_h_n[direction].ctypes.data, batch_sizes.ctypes.data, step_starts.ctypes.data, lengths.ctypes.data,
            steps, batch, total, first, rows, hidden_size, directions, direction,
            grad_h0[direction].ctypes.data, grad_gates.ctypes.data, grad_hidden_n.ctypes.data,
        )
    sequence_rows = total
    width = directions * size
    for task in prange(tasks):
        direction = task // pieces
        first_unit, units = piece(gate_size, pieces, task % pieces)
        column = direction * gate_size
        accumulate_product(
            float_size, grad_gates, column + first_unit, gate_ld, layer_input, 0, features, sequence_rows, units,
            features, grads_weight_ih[direction], first_unit * features, features,
        )
        if has_bias:
            column_sums(like, grad_gates, column + first_unit, sequence_rows, units, gate_ld,
                        grads_bias_ih[direction], first_unit)
        # The hidden side: r and z share the input side's gradient, n has its own in hidden_n.
        shared_units = max(0, min(first_unit + units, 2 * size) - first_unit)
        blocks, block_count = recurrent_blocks[direction], block_counts[direction]
        recurrent_weight_gradient(
            float_size, grad_gates, column, gate_ld, hidden, h0[direction], blocks, block_count, size, width,
            direction, first_unit, shared_units, grads_weight_hh[direction],
        )
        first_n = max(first_unit, 2 * size)
        n_units = first_unit + units - first_n
        if n_units > 0:
            recurrent_weight_gradient(
                float_size, grad_hidden_n, direction * size - 2 * size, width, hidden, h0[direction], blocks,
                block_count, size, width, direction, first_n, n_units, grads_weight_hh[direction],
            )
        if has_bias:
            column_sums(like, grad_gates, column + first_unit, sequence_rows, shared_units, gate_ld,
                        grads_bias_hh[direction], first_unit)
            if n_units > 0:
                column_sums(like, grad_hidden_n, direction * size + first_n - 2 * size, sequence_rows, n_units,
                            width, grads_bias_hh[direction], first_n)
        # Every task also takes a share of the input gradient's rows, so the work balances.
        first, rows = piece(sequence_rows, tasks, task)
        for source in range(directions):
            input_gradient(
                float_size, grad_gates, source * gate_size, gate_ld, weights_ih[source], gate_size, features, first,
                rows, 0.0 if source == 0 else 1.0, grad_input,
            )


forward_layer = jit(_forward_layer)
forward_layer_parallel = jit_parallel(_forward_layer)
backward_layer = jit(_backward_layer)
backward_layer_parallel = jit_parallel(_backward_layer)


def saved_widths(spec) -> dict[str, int]:
    """Per-step buffers training keeps besides every h_t, by name, in floats per direction."""
    return {"gates": GATES * spec.hidden_size, "hidden_n": spec.hidden_size}


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
        call.initial[0], call.hidden, saved_bytes(call, "gates") if call.saved else inference_gates(call, GATES),
        saved_bytes(call, "hidden_n"), bool(call.saved), call.batch_sizes, call.step_starts, call.lengths,
        call.steps, call.batch, call.total, spec.hidden_size, finals[0],
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
        spec.directions, params["weight_ih"], params["weight_hh"], call.initial[0], call.hidden,
        saved_bytes(call, "gates"), saved_bytes(call, "hidden_n"), grad_hidden, grad_finals[0], grad_initials[0],
        call.batch_sizes, call.step_starts, call.recurrent_blocks, call.block_counts, call.lengths, call.steps,
        call.batch, call.total, spec.hidden_size, grads["weight_ih"], grads["weight_hh"], grads["bias_ih"],
        grads["bias_hh"], spec.bias, grad_input, gradient_buffer(call, "gates", _scratch.GRADIENT_GATES),
        gradient_buffer(call, "hidden_n", _scratch.GRADIENT_CANDIDATE),
    )


def backward(call, grad_hidden, grad_finals, grad_initials, grads, grad_input) -> None:
    """Differentiate one layer (a ``LayerCall``): ``grad_hidden`` is consumed in place, the saved buffers only read."""
    _parallel.run_kernel(
        backward_layer, backward_layer_parallel, call.pieces,
        *backward_arguments(call, grad_hidden, grad_finals, grad_initials, grads, grad_input),
    )
