"""The bridge between torch tensors and fastrnn's functional kernels, autograd included.

Tensors go to the kernels as NumPy views of their memory (``tensor.detach().numpy()``) and
results come back as tensors over the kernels' own arrays (``torch.from_numpy``), so the
only copies are the ones the kernels make when an array is not laid out as they need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import functional

# fastrnn's functional entry points by cell kind, looked up on every call (not bound at
# import) so that a test can watch them with monkeypatch.
_FUNCTIONAL_NAMES = {
    "rnn_tanh": ("rnn_forward", "rnn_backward"),
    "rnn_relu": ("rnn_forward", "rnn_backward"),
    "lstm": ("lstm_forward", "lstm_backward"),
    "gru": ("gru_forward", "gru_backward"),
}
_NONLINEARITIES = {"rnn_tanh": "tanh", "rnn_relu": "relu"}


@dataclass(frozen=True, eq=False)  # eq=False: an array field has no truth value to compare by
class StackCall:
    """Everything about one functional call except its tensors.

    ``cell`` is ``rnn_tanh``, ``rnn_relu``, ``lstm`` or ``gru``; ``param_names`` are the
    torch names of the parameters passed, in order; ``state_count`` is 2 for LSTM's
    (h, c), else 1. ``seed`` seeds the dropout masks (None when dropout is off) and
    ``lengths`` (int64, one per sequence, or None) runs a padded batch as packed sequences.
    """

    cell: str
    param_names: tuple[str, ...]
    state_count: int
    batch_first: bool = False
    dropout: float = 0.0
    training: bool = False
    seed: int | None = None
    lengths: np.ndarray | None = None

    def forward(self, x: np.ndarray, hx, params: dict[str, np.ndarray], requires_grad: bool):
        name = _FUNCTIONAL_NAMES[self.cell][0]
        options = {"nonlinearity": _NONLINEARITIES[self.cell]} if self.cell in _NONLINEARITIES else {}
        generator = None if self.seed is None else np.random.default_rng(self.seed)
        return getattr(functional, name)(
            x, hx, params, batch_first=self.batch_first, dropout=self.dropout, training=self.training,
            requires_grad=requires_grad, generator=generator, lengths=self.lengths, **options,
        )

    def backward(self, saved, grad_output: np.ndarray, grad_state):
        return getattr(functional, _FUNCTIONAL_NAMES[self.cell][1])(saved, grad_output, grad_state)


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory, strides included; the kernels copy only if they must.

    A tensor may carry a lazy negation (autograd hands gradients on as neg views), which
    numpy() refuses; resolve_neg() materialises it, and is free when there is none.
    """
    return tensor.detach().resolve_neg().numpy()


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over ``array``'s memory.

    fastrnn hands back the output read-only when backward will read it, so that NumPy
    callers cannot corrupt their gradients; torch warns on read-only arrays and has its
    own guard instead (the output is saved for backward, so an in-place change to it
    fails there). So a writable view is made of it, which costs no copy.
    """
    if not array.flags.writeable:
        view = array.view()
        try:
            view.flags.writeable = True
        except ValueError:  # memory NumPy does not own as writable: copy it
            view = array.copy()
        array = view
    return torch.from_numpy(array)


def _states_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _state_argument(arrays: Sequence[np.ndarray | None]):
    """The functional API's state argument: one array, a pair for LSTM, or None for zeros."""
    if all(array is None for array in arrays):
        return None
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def _run_arrays(call: StackCall, x: torch.Tensor, states: Sequence[torch.Tensor | None],
                params: Sequence[torch.Tensor], requires_grad: bool):
    hx = _state_argument([None if state is None else _as_array(state) for state in states])
    arrays = {name: _as_array(param) for name, param in zip(call.param_names, params, strict=True)}
    output, finals, saved = call.forward(_as_array(x), hx, arrays, requires_grad)
    return _as_tensor(output), tuple(_as_tensor(final) for final in _states_tuple(finals)), saved


class StackFunction(torch.autograd.Function):
    """fastrnn's forward and backward kernels as one autograd node.

    ``apply(call, x, *states, *params)``: ``states`` are ``call.state_count`` tensors or
    Nones (zeros), ``params`` follow ``call.param_names``. Returns ``(output, *finals)``.
    """

    @staticmethod
    def forward(ctx, call: StackCall, x: torch.Tensor, *tensors: torch.Tensor | None):
        states, params = tensors[: call.state_count], tensors[call.state_count:]
        output, finals, saved = _run_arrays(call, x, states, params, requires_grad=True)
        ctx.call = call
        ctx.fastrnn_saved = saved
        # The kernels' record reads the input, the states and the parameters through
        # views of these tensors' memory, and the output is its own buffer: saving them
        # lets torch's version counters refuse a backward after any of them was changed
        # in place, as torch's own RNNs do.
        ctx.save_for_backward(x, *tensors, output)
        return (output, *finals)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor, *grad_finals: torch.Tensor):
        # once_differentiable makes the gradients raise when differentiated, but only when
        # a gradient arriving here requires grad. Under create_graph that is not always so
        # (a loss that is a plain sum of the output), and the gradients would then pass for
        # constants in a double backward; a marker that requires grad makes it always so.
        marker = torch.empty(0, requires_grad=True) if torch.is_grad_enabled() else None
        return _first_order_backward(ctx, marker, grad_output, *grad_finals)


@once_differentiable
def _first_order_backward(ctx, marker: torch.Tensor | None, grad_output: torch.Tensor, *grad_finals: torch.Tensor):
    ctx.saved_tensors  # noqa: B018 -- the read raises if a saved tensor was modified in place
    call: StackCall = ctx.call
    grad_state = _state_argument([_as_array(grad) for grad in grad_finals])
    grad_x, grad_initials, param_grads = call.backward(ctx.fastrnn_saved, _as_array(grad_output), grad_state)
    needs = ctx.needs_input_grad  # (call, x, *states, *params)
    grads: list[torch.Tensor | None] = [None, torch.from_numpy(grad_x) if needs[1] else None]
    for need, grad in zip(needs[2: 2 + call.state_count], _states_tuple(grad_initials), strict=True):
        grads.append(torch.from_numpy(grad) if need else None)
    for need, name in zip(needs[2 + call.state_count:], call.param_names, strict=True):
        grads.append(torch.from_numpy(param_grads[name]) if need else None)
    return tuple(grads)


def run_stack(call: StackCall, x: torch.Tensor, states: Sequence[torch.Tensor | None],
              params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``(output, finals)`` of one fastrnn call on tensors, differentiable when autograd needs it.

    With grad mode off (``no_grad``, ``inference_mode``) or nothing requiring grad, the
    kernels run their inference path and keep no per-step state.
    """
    tracked = [x, *(state for state in states if state is not None), *params]
    if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tracked):
        output, *finals = StackFunction.apply(call, x, *states, *params)
        return output, tuple(finals)
    output, finals, _ = _run_arrays(call, x, states, params, requires_grad=False)
    return output, finals
