"""LSTM kernels: one call of ``forward_layer`` or ``backward_layer`` runs one layer, all
its directions, over the whole sequence; ``recur`` and ``backpropagate`` run one
direction, or a batch piece of one, through time, compiled once per dtype as C functions
(see ``native``), with every per-step product on the packed tile kernel.

Gates in torch's order i, f, g, o. With ``projected``, h_t = (o tanh(c_t)) W_hr^T and
``output_size`` is ``proj_size``; otherwise h_t = o tanh(c_t) and ``output_size`` is H.

What training keeps per step and batch row, per direction (``saved_widths``), besides
h_t (P floats, the layer's output): the four gate activations (4H floats) and c_t
(H floats); with a projection also o tanh(c_t) (H floats), which W_hr's gradient needs.
So 4 * (5H + P) bytes in float32 (4 * (6H + P) projected), 8 * ... in float64. Backward
reads them without writing, into a gates-sized buffer of its own for the gradient of the
pre-activations, so a forward can be differentiated more than once. Inference keeps none
of it: each piece works in O(rows * H) scratch.

Layout (C-contiguous, packed rows as ``schedule`` describes, N of them): ``layer_input``
(N, F); ``hidden`` (N, D*P); ``gates`` (N, D*4H); ``cells`` and ``unprojected`` (N, D*H);
direction d owns the d-th block of columns of each.
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

GATES = 4


def _recur(
    layer_input, features, packed_ih, packed_ih_size, bias_ih, bias_hh, project_steps, packed_hh, packed_hh_size,
    packed_hr, packed_hr_size, h0, c0, hidden, gates, cells, unprojected, keep, gates_given, batch_sizes,
    step_starts, lengths, steps, batch, total, first_row, rows, hidden_size, output_size, projected, directions,
    direction, h_n, c_n,
):
    """Run batch rows ``first_row:first_row+rows`` of one direction through their steps.

    Rows step as ``schedule`` says; a row that starts at a step reads h_0 and c_0. With
    ``project_steps`` each step first computes its own input projection from
    ``packed_ih``; otherwise ``gates`` already holds x_t W_ih^T. Without ``gates_given`` the
    gates, and without ``keep`` the cell state and o tanh(c), live in scratch, overwritten
    step after step (a row's scratch keeps its cell state while the row waits or is done).
    """
    sequence = total * directions
    kept = sequence if keep else 0
    layer_input = carray(layer_input, total * features)
    packed_ih = carray(packed_ih, packed_ih_size)
    bias_ih = carray(bias_ih, GATES * hidden_size)
    bias_hh = carray(bias_hh, GATES * hidden_size)
    project_steps = project_steps != 0
    packed_hh = carray(packed_hh, packed_hh_size)
    packed_hr = carray(packed_hr, packed_hr_size)
    h0 = carray(h0, batch * output_size)
    c0 = carray(c0, batch * hidden_size)
    hidden = carray(hidden, sequence * output_size)
    gates = carray(gates, sequence * GATES * hidden_size if gates_given else 0)
    cells = carray(cells, kept * hidden_size)
    unprojected = carray(unprojected, kept * hidden_size if projected else 0)
    keep = keep != 0
    gates_given = gates_given != 0
    batch_sizes = carray(batch_sizes, steps)
    step_starts = carray(step_starts, steps)
    lengths = carray(lengths, batch)
    projected = projected != 0
    h_n = carray(h_n, batch * output_size)
    c_n = carray(c_n, batch * hidden_size)
    size = hidden_size
    gate_size = GATES * size
    bias = bias_ih[:gate_size] + bias_hh[:gate_size]
    bias_i, bias_f, bias_g, bias_o = bias[:size], bias[size : 2 * size], bias[2 * size : 3 * size], bias[3 * size :]
    scratch_size = rows * (PANEL_BYTES // hidden.itemsize)
    own_gates = 0 if gates_given else rows * gate_size
    own_cells = 0 if keep else rows * size
    own_unprojected = own_cells if projected else 0
    workspace = np.empty(scratch_size + own_gates + own_cells + own_unprojected, dtype=hidden.dtype)
    scratch, free = split(uncounted(workspace), scratch_size)
    out_ld = directions * output_size
    if gates_given:
        gate_buffer, gate_ld = gates, directions * gate_size
    else:
        gate_buffer, free = split(free, own_gates)
        gate_ld = gate_size
    if keep:
        cell_buffer, cell_ld = cells, directions * size
        unprojected_buffer = unprojected
    else:
        cell_buffer, free = split(free, own_cells)
        unprojected_buffer, free = split(free, own_unprojected)
        cell_ld = size
    previous_at = 0
    cell_previous_at = 0
    previous_rows = 0  # rows of this piece that took the step run before
    reverse = direction == 1
    for s in range(steps):
        _, active, carried, row_at = forward_step(batch_sizes, step_starts, steps, s, reverse, first_row, rows,
                                                  previous_rows)
        if active == 0:
            continue
        gate_at = row_at * gate_ld + direction * gate_size if gates_given else 0
        cell_at = row_at * cell_ld + direction * size if keep else 0
        out_at = row_at * out_ld + direction * output_size
        if project_steps:
            zero_rows(gate_buffer, gate_at, gate_ld, active, gate_size)
            packed_product(
                layer_input, row_at * features, features, packed_ih, gate_buffer, gate_at, gate_ld, active, features,
                gate_size, scratch,
            )
        if carried > 0:
            packed_product(
                hidden, previous_at, out_ld, packed_hh, gate_buffer, gate_at, gate_ld, carried, output_size,
                gate_size, scratch,
            )
        if active > carried:
            packed_product(
                h0, (first_row + carried) * output_size, output_size, packed_hh, gate_buffer,
                gate_at + carried * gate_ld, gate_ld, active - carried, output_size, gate_size, scratch,
            )
        for r in range(active):
            at = gate_at + r * gate_ld
            # One view per gate block, each indexed from 0: LLVM vectorises the loop below
            # over j, with the nonlinearities as plain arithmetic.
            gate_i, gate_f = gate_buffer[at : at + size], gate_buffer[at + size : at + 2 * size]
            gate_g, gate_o = gate_buffer[at + 2 * size : at + 3 * size], gate_buffer[at + 3 * size : at + gate_size]
            if r < carried:
                cell_before = cell_buffer[cell_previous_at + r * cell_ld :][:size]
            else:
                cell_before = c0[(first_row + r) * size :][:size]
            cell = cell_buffer[cell_at + r * cell_ld :][:size]
            if projected:
                result = unprojected_buffer[cell_at + r * cell_ld :][:size]
            else:
                result = hidden[out_at + r * out_ld :][:size]
            # Loops of a few arrays each: with more, LLVM gives up the run-time checks that
            # the views do not overlap, and with them the vector code.
            for j in range(size):
                gate_i[j] = sigmoid(gate_i[j] + bias_i[j])
            for j in range(size):
                gate_f[j] = sigmoid(gate_f[j] + bias_f[j])
            for j in range(size):
                gate_g[j] = tanh(gate_g[j] + bias_g[j])
            for j in range(size):
                gate_o[j] = sigmoid(gate_o[j] + bias_o[j])
            for j in range(size):
                cell[j] = gate_f[j] * cell_before[j] + gate_i[j] * gate_g[j]
            for j in range(size):
                result[j] = gate_o[j] * tanh(cell[j])
        if projected:
            zero_rows(hidden, out_at, out_ld, active, output_size)
            packed_product(
                unprojected_buffer, cell_at, cell_ld, packed_hr, hidden, out_at, out_ld, active, size, output_size,
                scratch,
            )
        previous_at, cell_previous_at, previous_rows = out_at, cell_at, active
    take_final_states(lengths, step_starts, first_row, rows, reverse, hidden, out_ld, direction * output_size, h0,
                      h_n, output_size)
    if keep:
        take_final_states(lengths, step_starts, first_row, rows, reverse, cells, cell_ld, direction * size, c0, c_n,
                          size)
    else:
        # A row's scratch holds the cell state of its last step (rows wait or stop untouched).
        for r in range(rows):
            row = first_row + r
            source, at = (c0, row * size) if lengths[row] == 0 else (cell_buffer, r * size)
            for c in range(size):
                c_n[row * size + c] = source[at + c]
    keep_alive(workspace)


def _backpropagate(
    packed_hh, packed_hh_size, packed_hr, packed_hr_size, c0, gates, cells, grad_hidden, grad_h_n, grad_c_n,
    batch_sizes, step_starts, lengths, steps, batch, total, first_row, rows, hidden_size, output_size, projected,
    directions, direction, grad_h0, grad_c0, grad_gates,
):
    """Backpropagate batch rows ``first_row:first_row+rows`` of one direction through time.

    On entry ``grad_hidden`` holds dLoss/dh_t from above; on exit it holds the total
    dLoss/dh_t of this direction's block, and ``grad_gates`` (laid out as ``gates``, which
    is only read, so a second backward of one forward gives the same result) holds
    dLoss/dz_t, the gradient of the gate pre-activations. ``packed_hh`` and ``packed_hr``
    are W_hh and W_hr as stored. Steps run in the reverse of the forward's order; a row's
    dLoss/dh_0 comes from the step that read h_0.
    """
    sequence = total * directions
    packed_hh = carray(packed_hh, packed_hh_size)
    packed_hr = carray(packed_hr, packed_hr_size)
    c0 = carray(c0, batch * hidden_size)
    gates = carray(gates, sequence * GATES * hidden_size)
    cells = carray(cells, sequence * hidden_size)
    grad_hidden = carray(grad_hidden, sequence * output_size)
    grad_h_n = carray(grad_h_n, batch * output_size)
    grad_c_n = carray(grad_c_n, batch * hidden_size)
    batch_sizes = carray(batch_sizes, steps)
    step_starts = carray(step_starts, steps)
    lengths = carray(lengths, batch)
    projected = projected != 0
    grad_h0 = carray(grad_h0, batch * output_size)
    grad_c0 = carray(grad_c0, batch * hidden_size)
    grad_gates = carray(grad_gates, sequence * GATES * hidden_size)
    size = hidden_size
    gate_size = GATES * size
    one = gates.dtype.type(1.0)
    scratch_size = rows * (PANEL_BYTES // gates.itemsize)
    workspace = np.empty(scratch_size + rows * size * (2 if projected else 1), dtype=gates.dtype)
    scratch, free = split(uncounted(workspace), scratch_size)
    grad_cell, grad_unprojected = split(free, rows * size)
    gate_ld, cell_ld, out_ld = directions * gate_size, directions * size, directions * output_size
    for r in range(rows):
        for j in range(size):
            grad_cell[r * size + j] = grad_c_n[(first_row + r) * size + j]
    reverse = direction == 1
    seed_final_gradients(lengths, step_starts, first_row, rows, reverse, grad_h_n, grad_hidden, out_ld,
                         direction * output_size, grad_h0, output_size)
    for s in range(steps):
        _, active, carried, row_at, earlier_at = backward_step(batch_sizes, step_starts, steps, s, reverse,
                                                               first_row, rows)
        if active == 0:
            continue
        gate_at = row_at * gate_ld + direction * gate_size
        cell_at = row_at * cell_ld + direction * size
        out_at = row_at * out_ld + direction * output_size
        if projected:
            zero_rows(grad_unprojected, 0, size, active, size)
            packed_product(
                grad_hidden, out_at, out_ld, packed_hr, grad_unprojected, 0, size, active, output_size, size, scratch
            )
            source, source_at, source_ld = grad_unprojected, 0, size
        else:
            source, source_at, source_ld = grad_hidden, out_at, out_ld
        for r in range(active):
            at = gate_at + r * gate_ld
            gate_i, gate_f = gates[at : at + size], gates[at + size : at + 2 * size]
            gate_g, gate_o = gates[at + 2 * size : at + 3 * size], gates[at + 3 * size : at + gate_size]
            grad_i, grad_f = grad_gates[at : at + size], grad_gates[at + size : at + 2 * size]
            grad_g, grad_o = grad_gates[at + 2 * size : at + 3 * size], grad_gates[at + 3 * size : at + gate_size]
            cell = cells[cell_at + r * cell_ld :][:size]
            if r < carried:
                cell_before = cells[(earlier_at + r) * cell_ld + direction * size :][:size]
            else:
                cell_before = c0[(first_row + r) * size :][:size]
            grad_result = source[source_at + r * source_ld :][:size]
            carried_grad = grad_cell[r * size : (r + 1) * size]
            # Loops of a few arrays each, so that each is vector code (see ``_recur``). The
            # first takes five, which still vectorises, so that tanh(c) is computed once: in a
            # standalone loop over these lines the gate gradients took 0.76-0.87x the time
            # of two loops computing it twice, with the same results to the bit.
            for j in range(size):
                tanh_c = tanh(cell[j])
                grad_o[j] = grad_result[j] * tanh_c * gate_o[j] * (one - gate_o[j])
                carried_grad[j] += grad_result[j] * gate_o[j] * (one - tanh_c * tanh_c)
            for j in range(size):
                grad_i[j] = carried_grad[j] * gate_g[j] * gate_i[j] * (one - gate_i[j])
            for j in range(size):
                grad_g[j] = carried_grad[j] * gate_i[j] * (one - gate_g[j] * gate_g[j])
            for j in range(size):
                grad_f[j] = carried_grad[j] * cell_before[j] * gate_f[j] * (one - gate_f[j])
            for j in range(size):
                carried_grad[j] *= gate_f[j]
        if carried > 0:
            packed_product(grad_gates, gate_at, gate_ld, packed_hh, grad_hidden,
                           earlier_at * out_ld + direction * output_size, out_ld, carried, gate_size, output_size,
                           scratch)
        if active > carried:
            packed_product(grad_gates, gate_at + carried * gate_ld, gate_ld, packed_hh, grad_h0,
                           (first_row + carried) * output_size, output_size, active - carried, gate_size,
                           output_size, scratch)
    for r in range(rows):
        for j in range(size):
            grad_c0[(first_row + r) * size + j] = grad_cell[r * size + j]
    keep_alive(workspace)


_recur_compiled = export(
    "lstm_recur", _recur, layer_input=ARRAY, features=INDEX, packed_ih=ARRAY, packed_ih_size=INDEX,
    bias_ih=ARRAY, bias_hh=ARRAY, project_steps=INDEX, packed_hh=ARRAY, packed_hh_size=INDEX, packed_hr=ARRAY,
    packed_hr_size=INDEX, h0=ARRAY, c0=ARRAY, hidden=ARRAY, gates=ARRAY, cells=ARRAY, unprojected=ARRAY,
    keep=INDEX, gates_given=INDEX, batch_sizes=INDICES, step_starts=INDICES, lengths=INDICES, steps=INDEX,
    batch=INDEX, total=INDEX, first_row=INDEX, rows=INDEX, hidden_size=INDEX, output_size=INDEX, projected=INDEX,
    directions=INDEX, direction=INDEX, h_n=ARRAY, c_n=ARRAY,
)
_backpropagate_compiled = export(
    "lstm_backpropagate", _backpropagate, stages=(BACKWARD,),
    packed_hh=ARRAY, packed_hh_size=INDEX, packed_hr=ARRAY,
    packed_hr_size=INDEX, c0=ARRAY, gates=ARRAY, cells=ARRAY, grad_hidden=ARRAY, grad_h_n=ARRAY, grad_c_n=ARRAY,
    batch_sizes=INDICES, step_starts=INDICES, lengths=INDICES, steps=INDEX, batch=INDEX, total=INDEX,
    first_row=INDEX, rows=INDEX, hidden_size=INDEX, output_size=INDEX, projected=INDEX, directions=INDEX,
    direction=INDEX, grad_h0=ARRAY, grad_c0=ARRAY, grad_gates=ARRAY,
)


def _forward_layer(
    like, layer_input, features, directions, weights_ih, weights_hh, biases_ih, biases_hh, weights_hr, h0, c0,
    hidden, gates, cells, unprojected, keep, batch_sizes, step_starts, lengths, steps, batch, total, hidden_size,
    output_size, projected, h_n, c_n, pieces, blas_single_threaded,
):
    """Fill ``hidden``, ``h_n`` and ``c_n`` (and with ``keep`` the saved buffers) for one layer.

    Pairs and pieces as in the Elman kernels. In training on one thread one GEMM per
    direction projects every step into ``gates``; otherwise each piece projects step by step.
    Rows are packed as ``schedule`` lays them out.
    """
    float_size = like.itemsize
    gate_size = GATES * hidden_size
    gates_given = gates.size > 0
    # One GEMM per direction projects every step at once when a task runs a whole direction;
    # batch pieces, whose rows are not contiguous across steps, project step by step.
    hoisted = gates_given and pieces == 1
    project_steps = not hoisted
    packed_hh_first, packed_hh_second = pack_pair(like, weights_hh, directions, output_size, gate_size, True)
    packed_ih_first, packed_ih_second = packed_hh_first, packed_hh_second  # not read unless projecting per step
    if project_steps:
        packed_ih_first, packed_ih_second = pack_pair(like, weights_ih, directions, features, gate_size, True)
    packed_hr_first, packed_hr_second = packed_hh_first, packed_hh_second  # not read without a projection
    if projected:
        packed_hr_first, packed_hr_second = pack_pair(
            like, weights_hr, directions, hidden_size, output_size, True
        )
    for task in prange(directions * pieces):
        direction = task // pieces
        first, rows = row_piece(lengths, batch, pieces, task % pieces)
        if hoisted:
            gemm_at(
                float_size, NO_TRANS, TRANS, total, gate_size, features, layer_input.ctypes.data, features,
                weights_ih[direction].ctypes.data, features, 0.0,
                gates.ctypes.data + direction * gate_size * float_size, directions * gate_size,
            )
        first_direction = direction == 0
        packed_ih = packed_ih_first if first_direction else packed_ih_second
        packed_hh = packed_hh_first if first_direction else packed_hh_second
        packed_hr = packed_hr_first if first_direction else packed_hr_second
        _recur_compiled(
            like, layer_input.ctypes.data, features, packed_ih.ctypes.data, packed_size(packed_ih, float_size),
            biases_ih[direction].ctypes.data, biases_hh[direction].ctypes.data, project_steps,
            packed_hh.ctypes.data, packed_size(packed_hh, float_size), packed_hr.ctypes.data,
            packed_size(packed_hr, float_size),
            h0[direction].ctypes.data, c0[direction].ctypes.data, hidden.ctypes.data, gates.ctypes.data,
            cells.ctypes.data, unprojected.ctypes.data, keep, gates_given, batch_sizes.ctypes.data,
            step_starts.ctypes.data, lengths.ctypes.data, steps, batch, total, first, rows, hidden_size, output_size,
            projected, directions, direction, h_n[direction].ctypes.data, c_n[direction].ctypes.data,
        )


def _backward_layer(
    like, layer_input, features, directions, weights_ih, weights_hh, weights_hr, h0, c0, hidden, gates, cells,
    unprojected, grad_hidden, grad_h_n, grad_c_n, grad_h0, grad_c0, batch_sizes, step_starts, recurrent_blocks,
    block_counts, lengths, steps, batch, total, hidden_size, output_size, projected, grads_weight_ih, grads_weight_hh,
    grads_bias_ih, grads_bias_hh, grads_weight_hr, has_bias, grad_input, grad_gates, pieces, blas_single_threaded,
):
    """Backpropagate one layer: through time by batch pieces, then the whole-sequence
    products (weight gradients, bias sums, the input gradient) by direction and row ranges."""
    float_size = like.itemsize
    gate_size = GATES * hidden_size
    gate_ld = directions * gate_size
    packed_hh_first, packed_hh_second = pack_pair(like, weights_hh, directions, gate_size, output_size, False)
    packed_hr_first, packed_hr_second = packed_hh_first, packed_hh_second
    if projected:
        packed_hr_first, packed_hr_second = pack_pair(
            like, weights_hr, directions, output_size, hidden_size, False
        )
    tasks = directions * pieces
    for task in prange(tasks):
        direction = task // pieces
        first, rows = row_piece(lengths, batch, pieces, task % pieces)
        packed_hh = packed_hh_first if direction == 0 else packed_hh_second
        packed_hr = packed_hr_first if direction == 0 else packed_hr_second
        _backpropagate_compiled(
            like, packed_hh.ctypes.data, packed_size(packed_hh, float_size), packed_hr.ctypes.data,
            packed_size(packed_hr, float_size), c0[direction].ctypes.data, gates.ctypes.data, cells.ctypes.data,
            grad_hidden.ctypes.data, grad_h_n[direction].ctypes.data, grad_c_n[direction].ctypes.data,
            batch_sizes.ctypes.data, step_starts.ctypes.data, lengths.ctypes.data, steps, batch, total, first, rows,
            hidden_size, output_size, projected, directions, direction,
            grad_h0[direction].ctypes.data, grad_c0[direction].ctypes.data, grad_gates.ctypes.data,
        )
    sequence_rows = total
    if projected:
        # In a loop of its own: inside the loop below, numba's threaded build of this
        # conditional product gave wrong input and weight gradients.
        for direction in prange(directions):
            accumulate_product(
                float_size, grad_hidden, direction * output_size, directions * output_size, unprojected,
                direction * hidden_size, directions * hidden_size, sequence_rows, output_size, hidden_size,
                grads_weight_hr[direction], 0, hidden_size,
            )
    for task in prange(tasks):
        direction = task // pieces
        first_unit, units = piece(gate_size, pieces, task % pieces)
        column = direction * gate_size
        accumulate_product(
            float_size, grad_gates, column + first_unit, gate_ld, layer_input, 0, features, sequence_rows, units,
            features, grads_weight_ih[direction], first_unit * features, features,
        )
        recurrent_weight_gradient(
            float_size, grad_gates, column, gate_ld, hidden, h0[direction], recurrent_blocks[direction],
            block_counts[direction], output_size, directions * output_size, direction, first_unit, units,
            grads_weight_hh[direction],
        )
        if has_bias:
            # Both biases enter the pre-activation additively, so they share one gradient.
            column_sums(like, grad_gates, column + first_unit, sequence_rows, units, gate_ld,
                        grads_bias_ih[direction], first_unit)
            column_sums(like, grad_gates, column + first_unit, sequence_rows, units, gate_ld,
                        grads_bias_hh[direction], first_unit)
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
    widths = {"gates": GATES * spec.hidden_size, "cells": spec.hidden_size}
    if spec.proj_size:
        widths["unprojected"] = spec.hidden_size
    return widths


def forward_arguments(call, finals) -> tuple:
    """The forward kernels' arguments for one layer (a ``LayerCall``), but for the piece
    count and BLAS flag that ``run_kernel`` adds; ``finals`` is (h_n, c_n) of its directions.

    The call's own arrays (``layer_input``, each of ``initial``, ``hidden``) and each of
    ``finals`` are placed as they are: a prepared inference call (``_prepared``) finds
    them by identity, to put the next call's arrays in their places.
    """
    spec, params = call.spec, call.params
    keep = bool(call.saved)
    return (
        call.like, call.layer_input, call.features,
        spec.directions, params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"],
        params["weight_hr"], call.initial[0], call.initial[1], call.hidden,
        saved_bytes(call, "gates") if keep else inference_gates(call, GATES),
        saved_bytes(call, "cells"), saved_bytes(call, "unprojected"), keep, call.batch_sizes, call.step_starts,
        call.lengths, call.steps, call.batch, call.total, spec.hidden_size, spec.output_size, spec.proj_size > 0,
        finals[0], finals[1],
    )


def forward(call, finals) -> None:
    """Run one layer (a ``LayerCall``); ``finals`` is (h_n, c_n) of its directions."""
    _parallel.run_kernel(forward_layer, forward_layer_parallel, call.pieces, *forward_arguments(call, finals))


def backward_arguments(call, grad_hidden, grad_finals, grad_initials, grads, grad_input) -> tuple:
    """The backward kernels' arguments for one layer (a ``LayerCall``), but for the piece
    count and BLAS flag that ``run_kernel`` adds. Every array is placed as it is given
    (the call's own, the saved buffers, the gradients), as in ``forward_arguments``.
    """
    spec, params = call.spec, call.params
    return (
        call.like, call.layer_input, call.features,
        spec.directions, params["weight_ih"], params["weight_hh"], params["weight_hr"], call.initial[0],
        call.initial[1], call.hidden, saved_bytes(call, "gates"), saved_bytes(call, "cells"),
        saved_bytes(call, "unprojected"),
        grad_hidden, grad_finals[0], grad_finals[1], grad_initials[0], grad_initials[1], call.batch_sizes,
        call.step_starts, call.recurrent_blocks, call.block_counts, call.lengths, call.steps, call.batch, call.total,
        spec.hidden_size, spec.output_size, spec.proj_size > 0, grads["weight_ih"], grads["weight_hh"],
        grads["bias_ih"], grads["bias_hh"], grads["weight_hr"], spec.bias, grad_input,
        gradient_buffer(call, "gates", _scratch.GRADIENT_GATES),
    )


def backward(call, grad_hidden, grad_finals, grad_initials, grads, grad_input) -> None:
    """Differentiate one layer (a ``LayerCall``): ``grad_hidden`` is consumed in place, the saved buffers only read."""
    _parallel.run_kernel(
        backward_layer, backward_layer_parallel, call.pieces,
        *backward_arguments(call, grad_hidden, grad_finals, grad_initials, grads, grad_input),
    )
