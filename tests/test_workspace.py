"""The kernels' scratch without reference counts (``fastrnn._kernels.workspace``): aliases
that see the same memory, and kernels that free every array they allocate exactly once."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np

from fastrnn._kernels.workspace import keep_alive, split, uncounted


@numba.njit
def _numbered_through_aliases(count, head):
    owner = np.empty(count)
    first, rest = split(uncounted(owner), head)
    for i in range(head):
        first[i] = i
    for i in range(count - head):
        rest[i] = head + i
    total = 0.0
    for i in range(count):
        total += owner[i]
    keep_alive(owner)
    return total


def test_the_pieces_of_an_uncounted_alias_write_the_owners_memory():
    assert _numbered_through_aliases(10, 3) == sum(range(10))
    assert _numbered_through_aliases(5, 0) == sum(range(5))


# numba counts its allocations and frees only when NUMBA_NRT_STATS is set before it starts.
ALLOCATIONS_SCRIPT = """
import numpy as np
from numba.core.runtime import rtsys
import fastrnn

rng = np.random.default_rng(0)
layers = [
    fastrnn.RNN(8, 16, num_layers=2, bidirectional=True, seed=0),
    fastrnn.LSTM(8, 16, num_layers=2, bidirectional=True, seed=0),
    fastrnn.LSTM(8, 16, proj_size=8, seed=0),
    fastrnn.GRU(8, 16, num_layers=2, bidirectional=True, seed=0),
]
x = rng.standard_normal((12, 64, 8)).astype(np.float32)
lengths = rng.integers(0, 13, size=64)


def every_pass(layer):
    for given in (None, lengths):
        layer.train()
        out, _ = layer(x, lengths=given)
        layer.backward(np.ones_like(out))
        layer.eval()
        layer(x, lengths=given)


for layer in layers:
    every_pass(layer)  # compiles or loads what the passes need
    before = rtsys.get_allocation_stats()
    every_pass(layer)
    after = rtsys.get_allocation_stats()
    print(type(layer).__name__, after.alloc - before.alloc, after.free - before.free,
          after.mi_alloc - before.mi_alloc, after.mi_free - before.mi_free)
"""


def test_kernels_free_every_array_they_allocate_exactly_once():
    environment = dict(os.environ, NUMBA_NRT_STATS="1")
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", ALLOCATIONS_SCRIPT], env=environment, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    counts = [line.split() for line in lines if line]
    assert [name for name, *_ in counts] == ["RNN", "LSTM", "LSTM", "GRU"]
    for name, allocated, freed, meminfos_allocated, meminfos_freed in counts:
        assert int(allocated) > 0, name  # the kernels' workspaces, at least
        assert (allocated, meminfos_allocated) == (freed, meminfos_freed), name
