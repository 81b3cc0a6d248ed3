"""The functional entry points, written once and bound to an engine by each public module."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ._frontend import Saved, run_backward, run_forward
from ._validation import as_array, check_dropout, check_nonlinearity, spec_from_params


def _states_out(states: tuple):
    return states[0] if len(states) == 1 else states


def functional_forward(
    engine,
    cell: str,
    x: Any,
    hx: Any,
    params: Any,
    *,
    batch_first: bool,
    dropout: float,
    training: bool,
    requires_grad: bool,
    generator: np.random.Generator | None,
    lengths: Any,
):
    dropout = check_dropout(dropout)
    spec, arrays = spec_from_params(params, cell)
    dtypes = {array.dtype for array in arrays.values()}
    x = as_array("input", x, None)
    x_dtype = x.dtype
    if len(dtypes) != 1 or x_dtype not in dtypes:
        found = ", ".join(sorted(str(d) for d in dtypes))
        raise TypeError(f"input has dtype {x_dtype} but params have dtype {found}; all must match")
    if generator is not None and not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
    output, finals, saved = run_forward(
        engine, spec, x, hx, arrays, dtype=x_dtype, batch_first=bool(batch_first), dropout=dropout,
        training=bool(training), requires_grad=bool(requires_grad), generator=generator, lengths=lengths,
    )
    return output, _states_out(finals), saved


def functional_backward(saved: Saved | None, grad_output: Any, grad_state: Any = None):
    grad_x, grad_initials, grads = run_backward(saved, grad_output, grad_state, None)
    return grad_x, _states_out(grad_initials), grads


class EntryPoints(NamedTuple):
    rnn_forward: Callable
    rnn_backward: Callable
    lstm_forward: Callable
    lstm_backward: Callable
    gru_forward: Callable
    gru_backward: Callable


def bind(engine) -> EntryPoints:
    """The six functional entry points of one engine, for a public module to export."""

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
        lengths: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Saved | None]:
        """Run an Elman stack over a whole sequence.

        Shapes follow ``torch.nn.RNN``: ``x`` is (T, B, I), (B, T, I) with ``batch_first``, or
        (T, I) unbatched; ``hx`` is (L*D, B, H) or (L*D, H), zeros when None. ``params``
        has torch's names (``weight_ih_l0``, ``bias_hh_l1_reverse`` ...); the layers, the
        directions and the bias are read from the names, so ``state_dict()`` passes as is.

        Returns ``(output, h_n, saved)``. ``saved`` feeds :func:`rnn_backward`; with
        ``requires_grad=False`` it is None and no per-step state is kept. Dropout between
        layers applies only when ``training`` is true, with masks drawn from ``generator``.

        ``lengths`` (B integers in [0, T], any order; batched input only) gives torch's
        packed-sequence results for a padded batch: zero output past each sequence's end,
        final states after each sequence's last step, the reverse direction starting
        there. Backward then differentiates that forward; ``grad_output`` past each end is
        ignored and ``grad_x`` there is zero.
        """
        return functional_forward(
            engine, check_nonlinearity(nonlinearity), x, hx, params, batch_first=batch_first, dropout=dropout,
            training=training, requires_grad=requires_grad, generator=generator, lengths=lengths,
        )

    def rnn_backward(
        saved: Saved, grad_output: ArrayLike, grad_h_n: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Backpropagate through the forward that produced ``saved``.

        ``grad_output`` has the forward output's shape and ``grad_h_n`` h_n's (zeros when
        None). Returns ``(grad_x, grad_hx, param_grads)``, the last keyed like ``params``.
        """
        return functional_backward(saved, grad_output, grad_h_n)

    def lstm_forward(
        x: ArrayLike,
        hx: tuple[ArrayLike, ArrayLike] | None,
        params: Mapping[str, ArrayLike],
        *,
        batch_first: bool = False,
        dropout: float = 0.0,
        training: bool = False,
        requires_grad: bool = True,
        generator: np.random.Generator | None = None,
        lengths: ArrayLike | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], Saved | None]:
        """Run an LSTM stack; as :func:`rnn_forward`, with ``hx`` a pair ``(h_0, c_0)`` or None.

        ``h`` states are (L*D, B, P) and ``c`` states (L*D, B, H), P the projection size
        (read from ``weight_hr_l0`` when present) or H. Returns ``(output, (h_n, c_n), saved)``.
        """
        return functional_forward(
            engine, "lstm", x, hx, params, batch_first=batch_first, dropout=dropout, training=training,
            requires_grad=requires_grad, generator=generator, lengths=lengths,
        )

    def lstm_backward(
        saved: Saved, grad_output: ArrayLike, grad_state: tuple[ArrayLike | None, ArrayLike | None] | None = None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
        """As :func:`rnn_backward`, with ``grad_state`` the pair ``(grad_h_n, grad_c_n)``,
        either part None for zeros; returns ``(grad_x, (grad_h_0, grad_c_0), param_grads)``."""
        return functional_backward(saved, grad_output, grad_state)

    def gru_forward(
        x: ArrayLike,
        hx: ArrayLike | None,
        params: Mapping[str, ArrayLike],
        *,
        batch_first: bool = False,
        dropout: float = 0.0,
        training: bool = False,
        requires_grad: bool = True,
        generator: np.random.Generator | None = None,
        lengths: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Saved | None]:
        """Run a GRU stack; same contract as :func:`rnn_forward`."""
        return functional_forward(
            engine, "gru", x, hx, params, batch_first=batch_first, dropout=dropout, training=training,
            requires_grad=requires_grad, generator=generator, lengths=lengths,
        )

    def gru_backward(
        saved: Saved, grad_output: ArrayLike, grad_h_n: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Same contract as :func:`rnn_backward`."""
        return functional_backward(saved, grad_output, grad_h_n)

    return EntryPoints(rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward, gru_backward)
