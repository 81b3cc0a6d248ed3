"""Stateless forward and backward for stacked, bidirectional RNN, LSTM and GRU.

``params`` is a mapping with torch's parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``
...); the number of layers, the directions, the bias and LSTM's projection are read from
the names and shapes, so ``torch_module.state_dict()`` can be passed as it is.
"""

from __future__ import annotations

from . import _stack
from ._frontend import Saved
from ._functional_api import bind

__all__ = ["Saved", "gru_backward", "gru_forward", "lstm_backward", "lstm_forward", "rnn_backward", "rnn_forward"]

rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward, gru_backward = bind(_stack)
