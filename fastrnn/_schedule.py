"""The compiled engine's row layout for a batch of sequences: packed, longest first.

See ``_kernels/schedule`` for what the kernels make of it. Here the caller's padded
time-major arrays go to that layout and back: for a batch of equal lengths both ways
are free reshapes; otherwise the batch is sorted by length (stably, so equal lengths
keep their order) and each step keeps only the rows of the sequences that have it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from . import _parallel

# Gathers of at least this many bytes run on fastrnn's threads; below it ``np.take``'s
# single pass costs about as much as handing the rows to the threads (200 rows of 1 KiB:
# 4.2 µs threaded against 4.7 µs).
PARALLEL_TAKE_BYTES = 256 * 2**10


def _take_rows(source: np.ndarray, indices: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.take(source, indices, axis=0, out=out)`` for C-contiguous 2-D arrays of one
    dtype and width, with indices known to be valid."""
    threads = _parallel.get_num_threads()
    if threads > 1 and out.nbytes >= PARALLEL_TAKE_BYTES:
        # Imported here: calls without lengths never need its dispatcher (it compiles on first call).
        from ._kernels.rows import take_rows

        with _parallel.numba_threads(threads):
            take_rows(source.view(np.uint8), indices, out.view(np.uint8))
        return out
    # take's default mode ("raise") would copy ``out`` once more.
    return np.take(source, indices, axis=0, out=out, mode="clip")


@dataclass(frozen=True)
class Schedule:
    padded_steps: int  # T of the caller's arrays
    batch: int
    lengths: np.ndarray  # (B,) int64 in the kernels' row order: non-increasing
    order: np.ndarray | None  # kernel row i is the caller's sequence order[i]; None: the caller's order, unpacked

    @classmethod
    def full(cls, steps: int, batch: int) -> Schedule:
        return _full_schedule(steps, batch)

    @classmethod
    def of_lengths(cls, lengths: np.ndarray, steps: int) -> Schedule:
        if np.all(lengths == steps):
            return cls.full(steps, len(lengths))
        order = np.argsort(-lengths, kind="stable")
        return cls(steps, len(lengths), np.ascontiguousarray(lengths[order]), order)

    @cached_property
    def steps(self) -> int:
        """The steps the kernels run: up to the longest sequence."""
        return int(self.lengths[0]) if self.batch else 0

    @cached_property
    def batch_sizes(self) -> np.ndarray:
        """(steps,) int64: how many sequences have step t, torch's ``PackedSequence.batch_sizes``."""
        counts = np.bincount(self.lengths, minlength=self.steps + 1)
        return np.ascontiguousarray(self.batch - np.cumsum(counts)[: self.steps], dtype=np.int64)

    @cached_property
    def step_starts(self) -> np.ndarray:
        """(steps,) int64: the packed row of each step's first sequence."""
        starts = np.zeros(self.steps, dtype=np.int64)
        np.cumsum(self.batch_sizes[:-1], out=starts[1:])
        return starts

    @cached_property
    def total(self) -> int:
        """Packed rows: the real steps of all sequences."""
        return int(self.lengths.sum())

    @cached_property
    def _padded_rows(self) -> np.ndarray:
        """The row of every packed row in the caller's (T*B, W) view: t * B + caller's batch index."""
        steps = np.repeat(np.arange(self.steps), self.batch_sizes)
        within = np.arange(self.total) - np.repeat(self.step_starts, self.batch_sizes)
        return steps * self.batch + self.order[within]

    @cached_property
    def _packed_sources(self) -> np.ndarray:
        """The packed row each of the caller's T*B rows comes from; ``total`` (the zero row) for padding."""
        sources = np.full(self.padded_steps * self.batch, self.total, dtype=np.int64)
        sources[self._padded_rows] = np.arange(self.total)
        return sources

    @cached_property
    def recurrent_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(blocks, counts)``: the GEMM blocks of backward's state products (see
        ``_kernels.schedule.recurrent_blocks``) of the forward and the reverse direction, as
        one (2, n, 4) int64 array, direction d's in ``blocks[d, :counts[d]]``, and the (2,)
        counts. Only backward reads them, so a schedule makes them on its first backward.
        """
        if self.lengths[-1] == self.steps:
            # Equal lengths: the first step reads h_0 and every other step the step before
            # (forward), or the last step reads h_0 and every other step the step after;
            # sequences that are all empty read nothing.
            batch = self.batch if self.steps else 0
            later = (self.steps - 1) * batch
            forward = [[0, 1, 0, batch], [batch, 0, 0, later]]
            reverse = [[0, 0, batch, later], [later, 1, 0, batch]]
            per_direction = [[block for block in blocks if block[3] > 0] for blocks in (forward, reverse)]
        else:
            from ._kernels.schedule import recurrent_blocks  # lengths differ: compiled on first use

            per_direction = []
            for reverse in (False, True):
                blocks, count = recurrent_blocks(self.batch_sizes, self.step_starts, self.steps, reverse)
                per_direction.append(blocks[:count])
        counts = np.array([len(blocks) for blocks in per_direction], dtype=np.int64)
        stacked = np.zeros((2, max(int(counts.max()), 1), 4), dtype=np.int64)
        for direction, blocks in enumerate(per_direction):
            if len(blocks):
                stacked[direction, : len(blocks)] = blocks
        return stacked, counts

    @property
    def zero_row(self) -> bool:
        """Whether ``unpack`` reads a zero row after the packed rows: when the batch is reordered."""
        return self.order is not None

    def pack(self, padded: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A caller's (T, B, W) time-major array as (packed rows, W), C-contiguous, in ``out`` if given.

        Unpacked schedules return a view, so a fresh ``padded`` stays the caller's to give.
        """
        width = padded.shape[-1]
        if self.order is None:
            return np.ascontiguousarray(padded).reshape(-1, width)
        rows = np.ascontiguousarray(padded).reshape(-1, width)
        if out is None:
            out = np.empty((self.total, width), dtype=rows.dtype)
        return _take_rows(rows, self._padded_rows, out)

    def packed_shape(self, width: int) -> tuple[int, int]:
        """The shape of ``packed_array``: the packed rows, and the zero row with ``zero_row``."""
        return (self.total + 1 if self.zero_row else self.total), width

    def packed_array(self, width: int, dtype, out: np.ndarray | None = None) -> np.ndarray:
        """An uninitialised ``packed_shape`` array for a result that ``unpack`` will read.

        With ``zero_row`` it has one more row, of zeros, past the packed rows: the kernels
        only touch the packed rows, and every padded step of the result reads the zero row.
        ``out``, if given, is used when it has that shape.
        """
        shape = self.packed_shape(width)
        if out is None or out.shape != shape:
            out = np.empty(shape, dtype=dtype)
        if self.zero_row:
            out[self.total] = 0
        return out

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """An array from ``packed_array`` back to the caller's (T, B, W), zero past each sequence's end.

        Every output row is written once, from its packed row or the zero row.
        """
        width = packed.shape[-1]
        if self.order is None:
            return packed.reshape(self.padded_steps, self.batch, width)
        if packed.shape[0] != self.total + 1:
            raise ValueError(f"unpack needs the {self.total + 1} rows of packed_array, got {packed.shape[0]}")
        padded = np.empty((self.padded_steps * self.batch, width), dtype=packed.dtype)
        _take_rows(np.ascontiguousarray(packed), self._packed_sources, padded)
        return padded.reshape(self.padded_steps, self.batch, width)

    def to_rows(self, states: np.ndarray) -> np.ndarray:
        """A stacked state (S, B, W) in the kernels' row order, C-contiguous."""
        return states if self.order is None else np.ascontiguousarray(states[:, self.order])

    def from_rows(self, states: np.ndarray) -> np.ndarray:
        """The inverse of ``to_rows``."""
        if self.order is None:
            return states
        restored = np.empty_like(states)
        restored[:, self.order] = states
        return restored

    def chunk(self, start: int, stop: int) -> Schedule:
        """Steps ``start:stop`` of this schedule as a schedule of their own (same row order)."""
        lengths = np.clip(self.lengths - start, 0, stop - start)
        return Schedule(stop - start, self.batch, lengths, self.order if self.order is not None else None)

    def packed_rows(self, start: int, stop: int) -> slice:
        """The packed rows of steps ``start:stop``."""
        first = int(self.step_starts[start]) if start < self.steps else self.total
        last = int(self.step_starts[stop]) if stop < self.steps else self.total
        return slice(first, last)


@lru_cache(maxsize=64)
def _full_schedule(steps: int, batch: int) -> Schedule:
    """The schedule of equal lengths, made once per shape: at small sizes its arrays took
    about a third of a call's Python time. The kernels only read them."""
    schedule = Schedule(steps, batch, np.full(batch, steps, dtype=np.int64), None)
    _ = schedule.batch_sizes, schedule.step_starts, schedule.total
    return schedule
