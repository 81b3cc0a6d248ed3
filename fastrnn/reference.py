"""Plain-NumPy twin of fastrnn: the same API, computed by an obvious per-step loop.

Use it as an oracle in tests and as the baseline in benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from . import _reference_engine
from ._frontend import Saved
from ._functional_api import functional_backward, functional_forward
from .layers import RNN as _CompiledRNN

__all__ = ["RNN", "rnn_backward", "rnn_forward"]


class RNN(_CompiledRNN):
    """``fastrnn.RNN`` computed step by step in NumPy."""

    _engine = _reference_engine


def rnn_forward(
    x: ArrayLike,
    hx: ArrayLike | None,
    params: Mapping[str, ArrayLike],
    *,
    nonlinearity: str = "tanh",
    batch_first: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    requires_grad: bool = True,
    generator: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, Saved | None]:
    """Same contract as :func:`fastrnn.functional.rnn_forward`."""
    return functional_forward(
        _reference_engine, x, hx, params, nonlinearity=nonlinearity, batch_first=batch_first,
        dropout=dropout, training=training, requires_grad=requires_grad, generator=generator,
    )


def rnn_backward(
    saved: Saved, grad_output: ArrayLike, grad_h_n: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Same contract as :func:`fastrnn.functional.rnn_backward`."""
    return functional_backward(saved, grad_output, grad_h_n)
