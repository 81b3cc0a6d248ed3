"""Which rows step when: the step schedule every cell's kernels read.

A layer's sequences are laid out packed, as torch's ``PackedSequence`` lays them out:
the rows are sorted by length, longest first, and step t holds ``batch_sizes[t]`` rows
(the sequences longer than t) from packed row ``step_starts[t]`` on. So the rows that
step at t are always a leading block of the batch, and every product covers only real
steps. A batch of equal lengths is the plain time-major layout, with
``step_starts[t] = t * B``.

The forward direction runs t = 0, 1, ...: a sequence drops out after its last step,
which leaves its final state in place. The reverse direction runs t = T-1, T-2, ...: a
sequence joins at its last step, t = lengths[b] - 1, from its initial state. Either way
the rows a step carries on from the step before are a leading block of those it runs,
and the rest start from the initial state.
"""

import numpy as np

from .._config import jit, jit_helper


@jit_helper
def active_rows(batch_sizes, t, first_row, rows):
    """How many of rows ``first_row : first_row + rows`` take step ``t``."""
    return min(max(batch_sizes[t] - first_row, 0), rows)


@jit_helper
def last_step(lengths, row, reverse):
    """The step after which ``row`` holds its final state; -1 for an empty sequence."""
    length = lengths[row]
    if length == 0:
        return -1
    return 0 if reverse else length - 1


@jit_helper
def row_piece(lengths, batch, pieces, index):
    """(first, rows) of piece ``index`` of ``pieces`` row ranges with near-equal real steps.

    Threads split a direction by its work, the real steps, not by rows: the rows are
    sorted by length, so equal row counts would leave the last thread little to do.
    """
    total = 0
    for row in range(batch):
        total += lengths[row]
    first = _steps_boundary(lengths, batch, total, pieces, index)
    last = batch if index == pieces - 1 else _steps_boundary(lengths, batch, total, pieces, index + 1)
    return first, last - first


@jit_helper
def _steps_boundary(lengths, batch, total, pieces, index):
    """The first row whose preceding rows hold at least ``index / pieces`` of all real steps."""
    if index == 0:
        return 0
    before = 0
    for row in range(batch):
        if before * pieces >= index * total:
            return row
        before += lengths[row]
    return batch


@jit_helper
def _add_block(blocks, count, dz_row, from_initial, source_row, rows):
    """Append one block unless it is empty; returns the new count."""
    if rows <= 0:
        return count
    blocks[count, 0] = dz_row
    blocks[count, 1] = from_initial
    blocks[count, 2] = source_row
    blocks[count, 3] = rows
    return count + 1


@jit
def recurrent_blocks(batch_sizes, step_starts, steps, reverse):
    """The state products of a direction, ``sum_t dz_t^T h_prev(t)``, as few GEMM blocks.

    Returns ``(blocks, count)``: rows of ``blocks[:count]`` are (dz_row, from_initial,
    source_row, rows), meaning packed rows ``dz_row : dz_row + rows`` of dz read, row for
    row, the states from ``source_row`` on: packed rows of the hidden states, or with
    ``from_initial`` rows of h_0. Steps with equal batch sizes are packed back to back, so
    a run of them pairs with the run one step behind it in one block: a batch of equal
    lengths is two blocks, as many as there are distinct lengths otherwise.

    A kernel of its own, called once per schedule (``_schedule.Schedule.recurrent_blocks``)
    rather than by the backward kernels: compiled into them, it made the first forward and
    backward of a layer from an empty cache take about 10% longer, and batches of equal
    lengths, the usual case, need no compiled code for it.
    """
    blocks = np.zeros((3 * steps + 1, 4), dtype=np.int64)
    count = 0
    start = 0
    while start < steps:
        rows = batch_sizes[start]
        stop = start + 1
        while stop < steps and batch_sizes[stop] == rows:
            stop += 1
        run = (stop - start - 1) * rows
        if not reverse:
            # The run's first step reads the step before it (its leading rows), or h_0.
            if start == 0:
                count = _add_block(blocks, count, step_starts[0], 1, 0, rows)
            else:
                count = _add_block(blocks, count, step_starts[start], 0, step_starts[start - 1], rows)
            count = _add_block(blocks, count, step_starts[start + 1] if run else 0, 0, step_starts[start], run)
        else:
            count = _add_block(blocks, count, step_starts[start], 0, step_starts[start + 1] if run else 0, run)
            # The run's last step reads the step after it for the rows that had it, and h_0
            # for the sequences that start there.
            carried = batch_sizes[stop] if stop < steps else 0
            count = _add_block(blocks, count, step_starts[stop - 1], 0, step_starts[stop] if carried else 0, carried)
            count = _add_block(blocks, count, step_starts[stop - 1] + carried, 1, carried, rows - carried)
        start = stop
    return blocks, count


@jit_helper
def forward_step(batch_sizes, step_starts, steps, s, reverse, first_row, rows, previous_rows):
    """The ``s``-th step a piece runs forward: ``(t, active, carried, row)``.

    ``active`` rows of the piece take step t, from packed row ``row`` on; the leading
    ``carried`` of them carry on from the step run before (which had ``previous_rows``),
    the rest start from the initial state.
    """
    t = steps - 1 - s if reverse else s
    active = active_rows(batch_sizes, t, first_row, rows)
    return t, active, min(active, previous_rows), step_starts[t] + first_row


@jit_helper
def backward_step(batch_sizes, step_starts, steps, s, reverse, first_row, rows):
    """The ``s``-th step a piece backpropagates: ``(t, active, carried, row, earlier_row)``.

    Steps run in the reverse of the forward's order. The leading ``carried`` of the
    ``active`` rows read their state from the step before in the forward's order, from
    packed row ``earlier_row`` on; the rest read the initial state.
    """
    t = s if reverse else steps - 1 - s
    active = active_rows(batch_sizes, t, first_row, rows)
    earlier = t + 1 if reverse else t - 1
    carried = 0
    earlier_row = 0
    if 0 <= earlier < steps:
        carried = min(active, active_rows(batch_sizes, earlier, first_row, rows))
        earlier_row = step_starts[earlier] + first_row
    return t, active, carried, step_starts[t] + first_row, earlier_row


@jit_helper
def take_final_states(lengths, step_starts, first_row, rows, reverse, states, ld, column, initial, finals, width):
    """finals[row] = the state ``row`` ended with, for the piece's rows: read from ``states``
    (packed rows ``ld`` apart, from ``column``) at the row's last step, or ``initial`` for
    an empty sequence. ``initial`` and ``finals`` are (B, width)."""
    for r in range(rows):
        row = first_row + r
        last = last_step(lengths, row, reverse)
        if last < 0:
            source, at = initial, row * width
        else:
            source, at = states, (step_starts[last] + row) * ld + column
        for c in range(width):
            finals[row * width + c] = source[at + c]


@jit_helper
def seed_final_gradients(lengths, step_starts, first_row, rows, reverse, grad_finals, grad_states, ld, column,
                         grad_initial, width):
    """Start backpropagation for the piece's rows: the final state's gradient joins
    ``grad_states`` (packed rows ``ld`` apart, from ``column``) at the row's last step, and
    the row's ``grad_initial`` is zeroed for the steps to accumulate into; an empty
    sequence's final state is its initial state, so its gradient is the final one's."""
    zero = grad_initial.dtype.type(0.0)
    for r in range(rows):
        row = first_row + r
        last = last_step(lengths, row, reverse)
        for c in range(width):
            if last < 0:
                grad_initial[row * width + c] = grad_finals[row * width + c]
            else:
                grad_initial[row * width + c] = zero
                grad_states[(step_starts[last] + row) * ld + column + c] += grad_finals[row * width + c]
