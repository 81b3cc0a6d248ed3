"""Shape handling shared by every engine: validate the call, go to time-major, come back.

Engines (the numba stack and the NumPy reference) only ever see C-contiguous time-major
arrays: ``x`` of shape (T, B, F) and one (L*D, B, width) array per state of the cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from . import _prepared
from ._spec import StackSpec
from ._validation import as_array, check_gradient_buffers, check_lengths


class Engine(Protocol):
    def forward(self, spec, x, initial, params, dropout, training, requires_grad, generator, lengths): ...

    def backward(self, saved, grad_output, grad_finals, grads): ...


@dataclass(frozen=True)
class Layout:
    """How the caller laid out ``x`` and the states, so results come back the same way."""

    batched: bool
    batch_first: bool
    steps: int
    batch: int

    def to_time_major(self, array: np.ndarray, sequence: bool = True) -> np.ndarray:
        """A view of a caller's sequence (``x``, ``grad_output``) or state as time-major, batched."""
        if not self.batched:
            return array[:, None, :]
        if sequence and self.batch_first:
            return array.transpose(1, 0, 2)
        return array

    def from_time_major(self, array: np.ndarray, sequence: bool = True) -> np.ndarray:
        """The inverse of ``to_time_major``: a view in the caller's layout."""
        if not self.batched:
            return array[:, 0, :]
        if sequence and self.batch_first:
            # A view, not a copy: returning time-major memory costs nothing extra.
            return array.transpose(1, 0, 2)
        return array

    def sequence_shape(self, width: int) -> tuple[int, ...]:
        if not self.batched:
            return (self.steps, width)
        if self.batch_first:
            return (self.batch, self.steps, width)
        return (self.steps, self.batch, width)

    def state_shape(self, stacked: int, width: int) -> tuple[int, ...]:
        return (stacked, self.batch, width) if self.batched else (stacked, width)


@dataclass(frozen=True)
class Saved:
    """Everything ``backward`` needs from one forward; opaque to users."""

    engine: Any
    spec: StackSpec
    layout: Layout
    dtype: np.dtype
    state: Any


def _time_major_input(spec: StackSpec, x: Any, dtype: np.dtype | None, batch_first: bool):
    array = as_array("input", x, dtype)
    if array.ndim not in (2, 3):
        raise ValueError(
            f"expected input of 3 dimensions (T, B, {spec.input_size}) batched or 2 dimensions "
            f"(T, {spec.input_size}) unbatched, got {array.ndim} dimensions with shape {array.shape}"
        )
    if array.shape[-1] != spec.input_size:
        raise ValueError(
            f"expected input with last dimension input_size={spec.input_size}, got shape {array.shape}"
        )
    batched = array.ndim == 3
    if not batched:
        steps, batch = array.shape[0], 1
    elif batch_first:
        batch, steps = array.shape[:2]
    else:
        steps, batch = array.shape[:2]
    if steps == 0 or batch == 0:
        raise ValueError(f"expected an input with at least one step and one batch entry, got shape {array.shape}")
    layout = _layout(batched, batch_first, steps, batch)
    return np.ascontiguousarray(layout.to_time_major(array)), layout


@lru_cache(maxsize=256)
def _layout(batched: bool, batch_first: bool, steps: int, batch: int) -> Layout:
    """One ``Layout`` per distinct value, made once: building the frozen dataclass took
    about 1 µs of every call."""
    return Layout(batched=batched, batch_first=batch_first, steps=steps, batch=batch)


def _state_names(spec: StackSpec, prefix: str, suffix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{name}{suffix}" for name in spec.kind.states)


def _split_states(spec: StackSpec, value: Any, what: str, names: tuple[str, ...]) -> tuple[Any, ...]:
    """The caller's state argument as one entry per state: a lone array, or a pair for LSTM."""
    count = len(spec.kind.states)
    if count == 1:
        return (value,)
    if value is None:
        return (None,) * count
    if not isinstance(value, (tuple, list)) or len(value) != count:
        raise TypeError(f"expected {what} as a tuple ({', '.join(names)}) or None, got {type(value).__name__}")
    return tuple(value)


def _time_major_states(spec: StackSpec, values: tuple[Any, ...], names: tuple[str, ...], layout: Layout,
                       dtype: np.dtype, notes: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """C-contiguous time-major copies or views of given states; zeros for the ones not given."""
    stacked = spec.num_layers * spec.directions
    if values[0] is None and len(values) == 1:  # the common call: no state given
        return (np.zeros((stacked, layout.batch, spec.state_sizes[0]), dtype=dtype),)
    states = []
    for value, name, size, note in zip(values, names, spec.state_sizes, notes, strict=True):
        if value is None:
            states.append(np.zeros((stacked, layout.batch, size), dtype=dtype))
            continue
        array = as_array(name, value, dtype)
        expected = layout.state_shape(stacked, size)
        if array.shape != expected:
            raise ValueError(f"expected {name} of shape {expected}{note}, got {array.shape}")
        states.append(np.ascontiguousarray(layout.to_time_major(array, sequence=False)))
    return tuple(states)


def run_forward(
    engine: Engine,
    spec: StackSpec,
    x: Any,
    hx: Any,
    params: dict[str, np.ndarray],
    *,
    dtype: np.dtype | None,
    batch_first: bool,
    dropout: float,
    training: bool,
    requires_grad: bool,
    generator: np.random.Generator | None,
    lengths: Any = None,
):
    """Returns ``(output, finals, saved)`` in the caller's layout, ``finals`` one array per state.

    ``lengths`` (B values in [0, T], any order) gives each sequence's own length: the
    engines return torch's packed-sequence results, with zeros past each sequence's end.
    """
    if lengths is None:
        prepared = _prepared.run(engine, spec, params, x, hx, batch_first, requires_grad)
        if prepared is not None:
            output, finals, state, layout = prepared
            if requires_grad:
                return _read_only(output), finals, Saved(engine, spec, layout, output.dtype, state)
            return output, finals, None
    x_time_major, layout = _time_major_input(spec, x, dtype, batch_first)
    lengths = check_lengths(lengths, layout.batched, layout.steps, layout.batch)
    dtype = x_time_major.dtype
    names = ("hx",) if len(spec.kind.states) == 1 else _state_names(spec, "", "_0")
    notes = ("",) * len(names)
    initial = _time_major_states(spec, _split_states(spec, hx, "hx", names), names, layout, dtype, notes)
    output, finals, state = engine.forward(
        spec, x_time_major, initial, params, dropout, training, requires_grad, generator, lengths
    )
    if lengths is None:
        _prepared.prepare(engine, spec, params, x, hx, layout, dtype, requires_grad)
    saved = Saved(engine, spec, layout, dtype, state) if requires_grad else None
    output = layout.from_time_major(output)
    if saved is not None:
        output = _read_only(output)
    return output, tuple([layout.from_time_major(final, sequence=False) for final in finals]), saved


def _read_only(output: np.ndarray) -> np.ndarray:
    # The output is the last layer's hidden states, which backward reads: writing to it
    # would silently corrupt the gradients, so the caller gets a read-only view.
    output = output.view()
    output.flags.writeable = False
    return output


def run_backward(saved: Saved | None, grad_output: Any, grad_finals: Any, grads: dict[str, np.ndarray] | None):
    """Returns ``(grad_x, grad_initials, grads)`` in the caller's layout, one initial gradient per state."""
    if not isinstance(saved, Saved):
        raise TypeError(
            "backward needs the saved state returned by a forward with requires_grad=True, "
            f"got {type(saved).__name__}"
        )
    result = _prepared.run_backward(saved, grad_output, grad_finals, grads)
    if result is not None:
        return result
    spec, layout = saved.spec, saved.layout
    expected = layout.sequence_shape(spec.directions * spec.output_size)
    grad = as_array("grad_output", grad_output, saved.dtype)
    if grad.shape != expected:
        raise ValueError(f"expected grad_output of shape {expected} (the forward output's), got {grad.shape}")
    # The engines work in place on this buffer, so it is always a fresh copy.
    grad_time_major = np.array(layout.to_time_major(grad), dtype=saved.dtype, order="C", copy=True)
    names = _state_names(spec, "grad_", "_n")
    grad_states = _time_major_states(
        spec, _split_states(spec, grad_finals, "the final states' gradient", names), names, layout, saved.dtype,
        _state_names(spec, " (", "_n's)"),
    )
    buffers_given = grads is not None
    if grads is None:
        grads = {name: np.zeros(shape, dtype=saved.dtype) for name, shape in spec.parameter_shapes().items()}
    else:
        check_gradient_buffers(spec, grads, saved.dtype)
    grad_x, grad_initials = saved.engine.backward(saved.state, grad_time_major, grad_states, grads)
    _prepared.prepare_backward(saved, grads if buffers_given else None)
    return (
        layout.from_time_major(grad_x),
        tuple(layout.from_time_major(grad, sequence=False) for grad in grad_initials),
        grads,
    )
