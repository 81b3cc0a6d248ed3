"""The packed row layout's schedule: the GEMM blocks backward sums the state products in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fastrnn._schedule import Schedule


def states_read(schedule: Schedule, reverse: bool) -> dict[int, tuple[bool, int]]:
    """For every packed row, the state its step read, straight from the definition:
    ``(from_initial, row)``, a row of h_0 or a packed row of the hidden states."""
    batch_sizes, step_starts = schedule.batch_sizes.tolist(), schedule.step_starts.tolist()
    steps = schedule.steps
    read = {}
    for t in range(steps):
        earlier = t + 1 if reverse else t - 1
        carried = batch_sizes[earlier] if 0 <= earlier < steps else 0
        for i in range(batch_sizes[t]):
            read[step_starts[t] + i] = (False, step_starts[earlier] + i) if i < carried else (True, i)
    return read


def states_in_blocks(blocks: np.ndarray) -> dict[int, tuple[bool, int]]:
    read = {}
    for dz_row, from_initial, source_row, rows in blocks.tolist():
        assert rows > 0
        for j in range(rows):
            assert dz_row + j not in read, "a packed row is summed twice"
            read[dz_row + j] = (bool(from_initial), source_row + j)
    return read


@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=8), extra_steps=st.integers(0, 2))
@example(lengths=[5, 5, 5], extra_steps=0)  # equal lengths: two blocks per direction
@example(lengths=[3, 0, 1], extra_steps=1)
def test_recurrent_blocks_pair_every_row_with_the_state_its_step_read(lengths, extra_steps):
    schedule = Schedule.of_lengths(np.array(lengths, dtype=np.int64), max(lengths) + extra_steps)
    blocks, counts = schedule.recurrent_blocks
    assert blocks.dtype == counts.dtype == np.int64 and blocks.flags.c_contiguous and blocks.shape[0] == 2
    for direction, reverse in enumerate((False, True)):
        assert states_in_blocks(blocks[direction, : counts[direction]]) == states_read(schedule, reverse)


@pytest.mark.parametrize("reverse", [False, True])
def test_equal_lengths_take_two_blocks(reverse):
    blocks, counts = Schedule.of_lengths(np.full(4, 6, dtype=np.int64), 9).recurrent_blocks
    assert counts.tolist() == [2, 2]
    assert states_in_blocks(blocks[int(reverse), :2]) == states_read(Schedule.full(6, 4), reverse)
