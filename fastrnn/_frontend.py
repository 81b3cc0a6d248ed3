"""Shape handling shared by every engine: validate the call, go to time-major, come back.

Engines (the numba stack and the NumPy reference) only ever see C-contiguous time-major
arrays ``x`` of shape (T, B, F) and ``h0`` of shape (L*D, B, H).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._spec import StackSpec
from ._validation import as_array, check_gradient_buffers


class Engine(Protocol):
    def forward(self, spec, x, h0, params, dropout, training, requires_grad, generator): ...

    def backward(self, saved, grad_output, grad_h_n, grads): ...


@dataclass(frozen=True)
class Layout:
    """How the caller laid out ``x`` and ``hx``, so results come back the same way."""

    batched: bool
    batch_first: bool
    steps: int
    batch: int


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
    if batched:
        time_major = array.transpose(1, 0, 2) if batch_first else array
    else:
        time_major = array[:, None, :]
    steps, batch = time_major.shape[:2]
    if steps == 0 or batch == 0:
        raise ValueError(f"expected an input with at least one step and one batch entry, got shape {array.shape}")
    layout = Layout(batched=batched, batch_first=batch_first, steps=steps, batch=batch)
    return np.ascontiguousarray(time_major), layout


def _initial_state(spec: StackSpec, hx: Any, layout: Layout, dtype: np.dtype) -> np.ndarray:
    stacked = spec.num_layers * spec.directions
    if layout.batched:
        expected = (stacked, layout.batch, spec.hidden_size)
    else:
        expected = (stacked, spec.hidden_size)
    if hx is None:
        return np.zeros((stacked, layout.batch, spec.hidden_size), dtype=dtype)
    array = as_array("hx", hx, dtype)
    if array.shape != expected:
        raise ValueError(f"expected hx of shape {expected}, got {array.shape}")
    if not layout.batched:
        array = array[:, None, :]
    return np.ascontiguousarray(array)


def _to_caller_layout(output: np.ndarray, h_n: np.ndarray, layout: Layout):
    if not layout.batched:
        return output[:, 0, :], h_n[:, 0, :]
    if layout.batch_first:
        # A view, not a copy: returning time-major memory costs nothing extra.
        return output.transpose(1, 0, 2), h_n
    return output, h_n


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
):
    x_time_major, layout = _time_major_input(spec, x, dtype, batch_first)
    dtype = x_time_major.dtype
    h0 = _initial_state(spec, hx, layout, dtype)
    output, h_n, state = engine.forward(
        spec, x_time_major, h0, params, dropout, training, requires_grad, generator
    )
    saved = Saved(engine, spec, layout, dtype, state) if requires_grad else None
    output, h_n = _to_caller_layout(output, h_n, layout)
    if saved is not None:
        # The output is the last layer's hidden states, which backward reads: writing to it
        # would silently corrupt the gradients, so the caller gets a read-only view.
        output = output.view()
        output.flags.writeable = False
    return output, h_n, saved


def _expected_output_shape(spec: StackSpec, layout: Layout) -> tuple[int, ...]:
    width = spec.directions * spec.hidden_size
    if not layout.batched:
        return (layout.steps, width)
    if layout.batch_first:
        return (layout.batch, layout.steps, width)
    return (layout.steps, layout.batch, width)


def run_backward(saved: Saved | None, grad_output: Any, grad_h_n: Any, grads: dict[str, np.ndarray] | None):
    if not isinstance(saved, Saved):
        raise TypeError(
            "backward needs the saved state returned by a forward with requires_grad=True, "
            f"got {type(saved).__name__}"
        )
    spec, layout = saved.spec, saved.layout
    expected = _expected_output_shape(spec, layout)
    grad = as_array("grad_output", grad_output, saved.dtype)
    if grad.shape != expected:
        raise ValueError(f"expected grad_output of shape {expected} (the forward output's), got {grad.shape}")
    if not layout.batched:
        grad = grad[:, None, :]
    elif layout.batch_first:
        grad = grad.transpose(1, 0, 2)
    # The engines work in place on this buffer, so it is always a fresh copy.
    grad_time_major = np.array(grad, dtype=saved.dtype, order="C", copy=True)
    stacked = spec.num_layers * spec.directions
    state_shape = (stacked, layout.batch, spec.hidden_size) if layout.batched else (stacked, spec.hidden_size)
    if grad_h_n is None:
        grad_state = np.zeros((stacked, layout.batch, spec.hidden_size), dtype=saved.dtype)
    else:
        grad_state = as_array("grad_h_n", grad_h_n, saved.dtype)
        if grad_state.shape != state_shape:
            raise ValueError(f"expected grad_h_n of shape {state_shape} (h_n's), got {grad_state.shape}")
        if not layout.batched:
            grad_state = grad_state[:, None, :]
        grad_state = np.ascontiguousarray(grad_state)
    if grads is None:
        grads = {name: np.zeros(shape, dtype=saved.dtype) for name, shape in spec.parameter_shapes().items()}
    else:
        check_gradient_buffers(spec, grads, saved.dtype)
    grad_x, grad_hx = saved.engine.backward(saved.state, grad_time_major, grad_state, grads)
    if not layout.batched:
        return grad_x[:, 0, :], grad_hx[:, 0, :], grads
    if layout.batch_first:
        return grad_x.transpose(1, 0, 2), grad_hx, grads
    return grad_x, grad_hx, grads
