"""PackedSequence to a padded batch with lengths and back, for fastrnn's ``lengths=`` path.

A PackedSequence holds, for each step t, the rows of the ``batch_sizes[t]`` longest
sequences, in the sorted order ``sorted_indices`` gives. The kernels take the padded
(T, B, F) batch in the caller's order with one length per sequence, which is what
torch returns results in (h_n is in the caller's order for packed input too), so the
only reordering is this one gather into padded rows and the one back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PackedLayout:
    """Where each packed row sits in the padded, time-major (T, B) batch."""

    steps: int
    batch: int
    lengths: np.ndarray  # int64, one per sequence, in the caller's order
    padded_rows: torch.Tensor  # int64: packed row i is padded row padded_rows[i] of the (T*B) flattening

    @classmethod
    def of(cls, batch_sizes: torch.Tensor, sorted_indices: torch.Tensor | None) -> PackedLayout:
        sizes = batch_sizes.detach().cpu().numpy().astype(np.int64)
        steps, batch = len(sizes), int(sizes[0])
        order = np.arange(batch) if sorted_indices is None else sorted_indices.detach().cpu().numpy()
        # The j-th sequence in sorted order runs for as many steps as have more than j rows.
        sorted_lengths = (sizes[None, :] > np.arange(batch)[:, None]).sum(axis=1)
        lengths = np.empty(batch, dtype=np.int64)
        lengths[order] = sorted_lengths
        step_of_row = np.repeat(np.arange(steps), sizes)
        rank_in_step = np.arange(len(step_of_row)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        padded_rows = torch.from_numpy(step_of_row * batch + order[rank_in_step])
        return cls(steps, batch, lengths, padded_rows)

    def pad(self, data: torch.Tensor) -> torch.Tensor:
        """The packed rows as a zero-padded (T, B, F) batch; differentiable."""
        flat = data.new_zeros(self.steps * self.batch, data.shape[-1])
        return flat.index_copy(0, self.padded_rows, data).view(self.steps, self.batch, data.shape[-1])

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """The packed rows of a (T, B, F) batch; differentiable."""
        return padded.reshape(self.steps * self.batch, padded.shape[-1]).index_select(0, self.padded_rows)
