"""Stateless forward and backward for stacked, bidirectional Elman RNNs.

``params`` is a mapping with torch's parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``
...); the number of layers, the directions and the bias are read from the names, so
``torch_rnn.state_dict()`` can be passed as it is.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from . import _stack
from ._frontend import Saved
from ._functional_api import functional_backward, functional_forward

__all__ = ["Saved", "rnn_backward", "rnn_forward"]


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
    """Run the stack over a whole sequence.

    Shapes follow ``torch.nn.RNN``: ``x`` is (T, B, I), (B, T, I) with ``batch_first``, or
    (T, I) unbatched; ``hx`` is (L*D, B, H) or (L*D, H), zeros when None.

    Returns ``(output, h_n, saved)``. ``saved`` feeds :func:`rnn_backward`; with
    ``requires_grad=False`` it is None and no per-step state is kept. Dropout between
    layers applies only when ``training`` is true, with masks drawn from ``generator``.
    """
    return functional_forward(
        _stack, x, hx, params, nonlinearity=nonlinearity, batch_first=batch_first,
        dropout=dropout, training=training, requires_grad=requires_grad, generator=generator,
    )


def rnn_backward(
    saved: Saved, grad_output: ArrayLike, grad_h_n: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backpropagate through the forward that produced ``saved``.

    ``grad_output`` has the forward output's shape and ``grad_h_n`` h_n's (zeros when
    None). Returns ``(grad_x, grad_hx, param_grads)``, the last keyed like ``params``.
    """
    return functional_backward(saved, grad_output, grad_h_n)
