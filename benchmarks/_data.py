"""Layers and inputs for the benchmarks, all drawn from one fixed seed.

Both backends are built with the same seed, so the compiled layer and its NumPy baseline
hold the same weights and see the same input. A layer is ``RNN``, ``LSTM`` or ``GRU`` by
its cell, as in ``python -m fastrnn bench --cell``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import fastrnn
from fastrnn import reference
from fastrnn._bench_peers import build_layer

SEED = 0

# The ``backend`` parameter of the benchmarks: the compiled layers and their plain-NumPy twins.
BACKENDS = {"fastrnn": fastrnn, "reference": reference}


def random_array(shape: tuple[int, ...], dtype: str, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=dtype)


@dataclass
class Problem:
    """One sequence through one layer: the input and the gradient arriving at the output."""

    x: np.ndarray  # (T, B, I)
    grad_output: np.ndarray  # (T, B, D*H)


def make_problem(shape: tuple[int, int, int, int], bidirectional: bool, dtype: str) -> Problem:
    """``shape`` is (T, B, I, H): steps, batch, input_size, hidden_size."""
    steps, batch, input_size, hidden_size = shape
    width = (2 if bidirectional else 1) * hidden_size
    return Problem(
        x=random_array((steps, batch, input_size), dtype, SEED),
        grad_output=random_array((steps, batch, width), dtype, SEED + 1),
    )


def make_layer(
    backend: str, cell: str, shape: tuple[int, int, int, int], num_layers: int, bidirectional: bool, dtype: str
) -> fastrnn.RNN | fastrnn.LSTM | fastrnn.GRU:
    """``cell`` is one of ``fastrnn.bench.CELLS``: rnn_tanh, rnn_relu, lstm, gru."""
    _, _, input_size, hidden_size = shape
    return build_layer(
        BACKENDS[backend], cell, input_size, hidden_size, num_layers, bidirectional=bidirectional, dtype=dtype,
        seed=SEED,
    )

