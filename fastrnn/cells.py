"""Cell API: drop-ins for ``torch.nn.RNNCell``, ``LSTMCell`` and ``GRUCell``, one time step per call.

A cell is a one-layer, one-direction stack run over a single step by the layers' own
machinery; its parameters are that layer's under torch's cell names (``weight_ih`` for
``weight_ih_l0``). Each call in training mode records what its backward needs, and each
``backward`` differentiates the most recent call not yet differentiated, so a Python loop
of T calls is differentiated by T ``backward`` calls in reverse order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _stack
from ._frontend import Saved, run_backward, run_forward
from ._spec import StackSpec
from ._validation import as_array, check_gradient_buffers, check_nonlinearity, check_positive_int
from .layers import Parameters, check_flag

__all__ = ["GRUCell", "LSTMCell", "RNNCell"]


def _split_pair(value: Any, names: tuple[str, str], what: str) -> tuple[Any, Any]:
    """LSTM's pair argument as its two parts; None stands for two Nones (zeros)."""
    if value is None:
        return None, None
    expected = f"expected {what} as a tuple ({', '.join(names)}) or None"
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{expected}, got {type(value).__name__}")
    if len(value) != 2:
        raise TypeError(f"{expected}, got a {type(value).__name__} of length {len(value)}")
    return value[0], value[1]


class _Cell(Parameters):
    """One step of a recurrent cell; see ``RNNCell``, ``LSTMCell`` and ``GRUCell``."""

    _engine = _stack
    _owner_name = "cell"
    # The names of the cell's states and of their gradients, as messages call them.
    _state_names: tuple[str, ...] = ("hx",)
    _grad_names: tuple[str, ...] = ("grad_h_1",)

    def _init_cell(self, cell: str, input_size, hidden_size, bias, dtype, seed) -> None:
        spec = StackSpec(
            cell=cell,
            input_size=check_positive_int("input_size", input_size),
            hidden_size=check_positive_int("hidden_size", hidden_size),
            num_layers=1,
            bias=check_flag("bias", bias),
            bidirectional=False,
        )
        # The cell's parameter names for the layer's: weight_ih -> weight_ih_l0 and so on.
        self._layer_names = spec.direction_names(0, 0)
        self._init_parameters(spec, dtype, seed)
        self._records: list[Saved] = []

    def _parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {kind: self.spec.kind_shape(0, kind) for kind in self.spec.parameter_kinds}

    # torch's read-only hyper-parameters
    input_size = property(lambda self: self.spec.input_size)
    hidden_size = property(lambda self: self.spec.hidden_size)
    bias = property(lambda self: self.spec.bias)

    def _repr_extras(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        extras = [f"{self.input_size}", f"{self.hidden_size}"]
        if not self.bias:
            extras.append("bias=False")
        extras += self._repr_extras()
        extras.append(f"dtype={self.dtype}")
        return f"{type(self).__name__}({', '.join(extras)})"

    def _by_layer_names(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same arrays under the layer's names, so the engines read and accumulate into them.

        For a ``KernelArrays`` (the cell's own parameters and gradients) the renamed dict is
        kept in it while its entries stay the same arrays, so the engine's byte pairs kept
        in the renamed dict serve the next call too.
        """
        kept = arrays.__dict__ if type(arrays) is _stack.KernelArrays else None
        if kept is not None:
            renamed = kept.get("by_layer_names")
            if renamed is not None and len(renamed) == len(arrays):
                for name, array in arrays.items():
                    if renamed.get(self._layer_names.get(name)) is not array:
                        break
                else:
                    return renamed
        renamed = _stack.KernelArrays((self._layer_names[name], array) for name, array in arrays.items())
        if kept is not None:
            kept["by_layer_names"] = renamed
        return renamed

    def _check_input(self, x: Any) -> np.ndarray:
        array = as_array("input", x, self.dtype, self._owner_name)
        if array.ndim not in (1, 2) or array.shape[-1] != self.input_size:
            raise ValueError(
                f"expected input of shape (B, {self.input_size}) or ({self.input_size},), got {array.shape}"
            )
        if array.ndim == 2 and array.shape[0] == 0:
            raise ValueError(f"expected an input with at least one batch entry, got shape {array.shape}")
        return array

    def _check_states(self, values: tuple, names: tuple[str, ...], shape: tuple[int, ...]) -> tuple:
        """Each given state (or gradient) as an array of ``shape``; None stays None (zeros)."""
        arrays = []
        for value, name in zip(values, names, strict=True):
            if value is None:
                arrays.append(None)
                continue
            array = as_array(name, value, self.dtype, self._owner_name)
            if array.shape != shape:
                raise ValueError(f"expected {name} of shape {shape}, got {array.shape}")
            arrays.append(array)
        return tuple(arrays)

    def _state_shape(self, batched: bool, batch: int) -> tuple[int, ...]:
        return (batch, self.hidden_size) if batched else (self.hidden_size,)

    def _step(self, x: Any, states: tuple, requires_grad: bool | None) -> tuple[np.ndarray, ...]:
        """The new states after one step from ``states`` (one entry per state, None for zeros)."""
        keep = self.training if requires_grad is None else bool(requires_grad)
        x = self._check_input(x)
        batched = x.ndim == 2
        states = self._check_states(states, self._state_names, self._state_shape(batched, x.shape[0] if batched else 1))
        if keep:
            # The record holds these until backward: copies, so that the caller editing
            # its arrays in place meanwhile (refilling an input buffer, zeroing h where an
            # episode ends) cannot change the gradients.
            x = x.copy()
            states = tuple(None if state is None else state.copy() for state in states)
        # One step of a one-layer stack: x as (1, B, I) or (1, I), each state as (1, B, H) or (1, H).
        initial = tuple(None if state is None else state[None] for state in states)
        _, finals, saved = run_forward(
            self._engine, self.spec, x[None], initial if len(initial) > 1 else initial[0],
            self._by_layer_names(self._params), dtype=self.dtype, batch_first=False, dropout=0.0,
            training=self.training, requires_grad=keep, generator=None,
        )
        if saved is not None:
            self._records.append(saved)
        return tuple(final[0] for final in finals)

    def _differentiate(self, grads: tuple) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """``(grad_x, grad_states)`` of the most recent call not yet differentiated."""
        if not self._records:
            raise ValueError(
                "backward needs a recorded call to differentiate, got none: each call in training mode "
                "(or with requires_grad=True) is differentiated by one backward, most recent first"
            )
        saved = self._records[-1]
        shape = self._state_shape(saved.layout.batched, saved.layout.batch)
        grad_h, *grad_others = self._check_states(grads, self._grad_names, shape)
        check_gradient_buffers(self._parameter_shapes(), self.grads, self.dtype)
        # The step's output is h_1 itself, so h_1's gradient enters as the output's and
        # the final states' gradients are the other states' only.
        grad_output = np.zeros((1, *shape), dtype=self.dtype) if grad_h is None else grad_h[None]
        grad_finals = (None, *(None if grad is None else grad[None] for grad in grad_others)) if grad_others else None
        grad_x, grad_initials, _ = run_backward(saved, grad_output, grad_finals, self._by_layer_names(self.grads))
        self._records.pop()
        return grad_x[0], tuple(grad[0] for grad in grad_initials)

    def __call__(self, x: ArrayLike, hx: Any = None, *, requires_grad: bool | None = None):
        return self.forward(x, hx, requires_grad=requires_grad)


class RNNCell(_Cell):
    """An Elman cell with tanh or ReLU, matching ``torch.nn.RNNCell``.

    ``h_1 = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``. ``cell(x, hx)`` takes ``x`` of
    shape (B, I) or (I,) and ``hx`` of (B, H) or (H,), zeros when None, and returns ``h_1``.
    In training mode (or with ``requires_grad=True``) each call is recorded, and
    ``backward(grad_h_1)`` differentiates the most recent recorded call, returning
    ``(grad_x, grad_hx)`` and accumulating parameter gradients into ``grads``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        cell = check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self._init_cell(cell, input_size, hidden_size, bias, dtype, seed)

    def _repr_extras(self) -> list[str]:
        return [f"nonlinearity={self.nonlinearity!r}"] if self.nonlinearity != "tanh" else []

    def forward(self, x: ArrayLike, hx: ArrayLike | None = None, *, requires_grad: bool | None = None) -> np.ndarray:
        """``h_1 = cell(x, hx)``; see the class docstring."""
        (h_1,) = self._step(x, (hx,), requires_grad)
        return h_1

    def backward(self, grad_h_1: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
        """Differentiate the most recent recorded call; returns ``(grad_x, grad_hx)``."""
        grad_x, (grad_hx,) = self._differentiate((grad_h_1,))
        return grad_x, grad_hx


class LSTMCell(_Cell):
    """An LSTM cell, matching ``torch.nn.LSTMCell``: gates i, f, g, o in torch's order,
    ``c_1 = f c_0 + i g``, ``h_1 = o tanh(c_1)``.

    ``cell(x, (h_0, c_0))`` returns ``(h_1, c_1)``; the pair, or either part, may be None
    (zeros). ``backward((grad_h_1, grad_c_1))`` differentiates the most recent recorded
    call and returns ``(grad_x, (grad_h_0, grad_c_0))``; either gradient may be None.
    """

    _state_names = ("h_0", "c_0")
    _grad_names = ("grad_h_1", "grad_c_1")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        self._init_cell("lstm", input_size, hidden_size, bias, dtype, seed)

    def forward(
        self, x: ArrayLike, hx: tuple[ArrayLike | None, ArrayLike | None] | None = None, *,
        requires_grad: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``h_1, c_1 = cell(x, (h_0, c_0))``; see the class docstring."""
        h_1, c_1 = self._step(x, _split_pair(hx, self._state_names, "hx"), requires_grad)
        return h_1, c_1

    def backward(
        self, grad_state: tuple[ArrayLike | None, ArrayLike | None] | None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Differentiate the most recent recorded call; returns ``(grad_x, (grad_h_0, grad_c_0))``."""
        grad_x, (grad_h_0, grad_c_0) = self._differentiate(
            _split_pair(grad_state, self._grad_names, "the gradient of (h_1, c_1)")
        )
        return grad_x, (grad_h_0, grad_c_0)


class GRUCell(_Cell):
    """A GRU cell, matching ``torch.nn.GRUCell``: gates r, z, n in torch's order and formula,
    ``n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))``, ``h_1 = (1 - z) n + z h``.

    Called and differentiated like ``RNNCell``: ``h_1 = cell(x, hx)``,
    ``grad_x, grad_hx = cell.backward(grad_h_1)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        self._init_cell("gru", input_size, hidden_size, bias, dtype, seed)

    def forward(self, x: ArrayLike, hx: ArrayLike | None = None, *, requires_grad: bool | None = None) -> np.ndarray:
        """``h_1 = cell(x, hx)``; see the class docstring."""
        (h_1,) = self._step(x, (hx,), requires_grad)
        return h_1

    def backward(self, grad_h_1: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
        """Differentiate the most recent recorded call; returns ``(grad_x, grad_hx)``."""
        grad_x, (grad_hx,) = self._differentiate((grad_h_1,))
        return grad_x, grad_hx
