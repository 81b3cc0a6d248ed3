"""Plain-NumPy twin of fastrnn: the same API, computed by an obvious per-step loop.

Use it as an oracle in tests and as the baseline in benchmarks.
"""

from __future__ import annotations

from . import _reference_engine, cells, layers
from ._functional_api import bind

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "gru_backward", "gru_forward", "lstm_backward",
           "lstm_forward", "rnn_backward", "rnn_forward"]


class RNN(layers.RNN):
    """``fastrnn.RNN`` computed step by step in NumPy."""

    _engine = _reference_engine


class LSTM(layers.LSTM):
    """``fastrnn.LSTM`` computed step by step in NumPy."""

    _engine = _reference_engine


class GRU(layers.GRU):
    """``fastrnn.GRU`` computed step by step in NumPy."""

    _engine = _reference_engine


class RNNCell(cells.RNNCell):
    """``fastrnn.RNNCell`` computed in NumPy."""

    _engine = _reference_engine


class LSTMCell(cells.LSTMCell):
    """``fastrnn.LSTMCell`` computed in NumPy."""

    _engine = _reference_engine


class GRUCell(cells.GRUCell):
    """``fastrnn.GRUCell`` computed in NumPy."""

    _engine = _reference_engine


rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward, gru_backward = bind(_reference_engine)
