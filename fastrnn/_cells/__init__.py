"""Cell kinds: the one description of each cell that every part of the package reads.

A cell kind says how many gate blocks its weights stack, which states it carries, which
parameters it has and where its compiled kernels live. The stack, the front end, the
validation, the layers and the reference engine read only this description, so a new
cell is a new description module here plus a kernel module in ``fastrnn._kernels``.

Each description module also holds the cell's reference step in plain NumPy, the
obvious per-step formula that the tests and benchmarks measure the kernels against.
"""

from __future__ import annotations

from . import elman, gru, lstm
from .kind import PARAMETER_KINDS, CellKind

CELL_KINDS: dict[str, CellKind] = {kind.name: kind for kind in (elman.TANH, elman.RELU, lstm.KIND, gru.KIND)}

__all__ = ["CELL_KINDS", "PARAMETER_KINDS", "CellKind"]
