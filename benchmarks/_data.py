"""Layers and inputs for the benchmarks, all drawn from one fixed seed.

Both backends are built with the same seed, so the compiled layer and its NumPy baseline
hold the same weights and see the same input. A layer is ``RNN``, ``LSTM`` or ``GRU`` by
its cell, as in ``python -m fastrnn bench --cell``, and a problem's sequence lengths are
those of ``python -m fastrnn bench --lengths``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

import fastrnn
from fastrnn import reference
from fastrnn._bench_peers import build_layer

SEED = 0

# The ``backend`` parameter of the benchmarks: the compiled layers and their plain-NumPy twins.
BACKENDS = {"fastrnn": fastrnn, "reference": reference}
# The ``lengths`` parameter: every sequence runs all T steps, or each its own length in [1, T].
LENGTHS_MODES = ["full", "uniform"]
LENGTHS_SEED = 0


def random_array(shape: tuple[int, ...], dtype: str, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=dtype)


def make_lengths(mode: str, steps: int, batch: int) -> np.ndarray | None:
    """None for "full"; for "uniform", B lengths drawn uniformly from [1, T].

    The same draw as ``fastrnn.bench.draw_lengths`` (tests/test_asv.py checks it), written
    out here because the suite also runs commits whose fastrnn predates that function.
    """
    if mode == "full":
        return None
    if mode == "uniform":
        return np.random.default_rng(LENGTHS_SEED).integers(1, steps, size=batch, endpoint=True, dtype=np.int64)
    raise ValueError(f"unknown lengths mode {mode!r}; expected one of {LENGTHS_MODES}")


@dataclass
class Problem:
    """One batch of sequences through one layer: the input, the gradient arriving at the
    output, and each sequence's length (None: all T steps)."""

    x: np.ndarray  # (T, B, I)
    grad_output: np.ndarray  # (T, B, D*H)
    lengths: np.ndarray | None = None  # (B,)


def make_problem(
    shape: tuple[int, int, int, int], bidirectional: bool, dtype: str, lengths: str = "full"
) -> Problem:
    """``shape`` is (T, B, I, H): steps, batch, input_size, hidden_size; ``lengths`` one of ``LENGTHS_MODES``."""
    steps, batch, input_size, hidden_size = shape
    width = (2 if bidirectional else 1) * hidden_size
    return Problem(
        x=random_array((steps, batch, input_size), dtype, SEED),
        grad_output=random_array((steps, batch, width), dtype, SEED + 1),
        lengths=make_lengths(lengths, steps, batch),
    )


def takes_lengths(layer) -> bool:
    """Whether the layer's forward has ``lengths=``: a fastrnn older than it has not."""
    return "lengths" in inspect.signature(layer.forward).parameters


def run_forward(layer, problem: Problem):
    """``layer(x)``, with the problem's lengths if it has any; a full-length problem calls
    the layer exactly as before lengths existed, so older commits run it too."""
    if problem.lengths is None:
        return layer(problem.x)
    return layer(problem.x, lengths=problem.lengths)


def make_layer(
    backend: str, cell: str, shape: tuple[int, int, int, int], num_layers: int, bidirectional: bool, dtype: str
) -> fastrnn.RNN | fastrnn.LSTM | fastrnn.GRU:
    """``cell`` is one of ``fastrnn.bench.CELLS``: rnn_tanh, rnn_relu, lstm, gru."""
    _, _, input_size, hidden_size = shape
    return build_layer(
        BACKENDS[backend], cell, input_size, hidden_size, num_layers, bidirectional=bidirectional, dtype=dtype,
        seed=SEED,
    )

