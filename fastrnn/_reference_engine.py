"""The plain-NumPy engine: a per-step loop vectorised over the batch.

It is the oracle every test compares against and the baseline every benchmark is
measured against, so it is written to be read, not to be fast. The step formulas are
the cell descriptions' own (``fastrnn._cells``); this module only runs them through time.
"""

from __future__ import annotations

import sys
from functools import partial

import numpy as np

from . import _stacking
from ._spec import StackSpec


def _direction_weights(spec: StackSpec, params, layer: int, direction: int, dtype) -> dict[str, np.ndarray]:
    weights = {kind: params[name] for kind, name in spec.direction_names(layer, direction).items()}
    if not spec.bias:
        weights["bias_ih"] = weights["bias_hh"] = np.zeros(spec.gate_size, dtype=dtype)
    return weights


def _time_order(steps: int, direction: int) -> list[int]:
    return list(range(steps)) if direction == 0 else list(reversed(range(steps)))


def _active_rows(lengths, t: int, batch: int) -> np.ndarray:
    """(B, 1) booleans: which sequences have a step ``t``; all of them without ``lengths``."""
    if lengths is None:
        return np.ones((batch, 1), dtype=bool)
    return (t < lengths)[:, None]


def forward_layer(spec: StackSpec, params, layer, layer_input, initial, finals, keep, last, lengths):
    """Every sequence b steps through t < lengths[b] only: a state is carried unchanged past
    the sequence's end (so the reverse direction starts at its last step, from h_0), and
    the output there is zero."""
    steps, batch, _ = layer_input.shape
    width = spec.output_size
    hidden = np.zeros((steps, batch, spec.directions * width), dtype=layer_input.dtype)
    caches = []
    for direction in range(spec.directions):
        weights = _direction_weights(spec, params, layer, direction, layer_input.dtype)
        state = tuple(value[direction] for value in initial)
        step_caches = [None] * steps
        for t in _time_order(steps, direction):
            active = _active_rows(lengths, t, batch)
            stepped, cache = spec.kind.reference_step(weights, layer_input[t], state)
            state = tuple(np.where(active, new, old) for new, old in zip(stepped, state, strict=True))
            hidden[t, :, direction * width : (direction + 1) * width] = np.where(active, stepped[0], 0)
            step_caches[t] = (cache, active)
        for final, value in zip(finals, state, strict=True):
            final[direction] = value
        caches.append(step_caches)
    return hidden, caches if keep else None


def backward_layer(spec: StackSpec, params, layer, layer_input, record, grad_hidden, grad_finals, grad_initials,
                   grads, lengths):
    """The chain rule through ``forward_layer``'s masks: past a sequence's end its state's
    gradient passes through unchanged, and nothing reaches the step, its input or the weights."""
    steps = layer_input.shape[0]
    width = spec.output_size
    grad_input = np.zeros_like(layer_input)
    for direction in range(spec.directions):
        names = spec.direction_names(layer, direction)
        weights = _direction_weights(spec, params, layer, direction, layer_input.dtype)
        grad_state = tuple(grad[direction] for grad in grad_finals)
        for t in reversed(_time_order(steps, direction)):
            cache, active = record.saved[direction][t]
            from_above = grad_hidden[t, :, direction * width : (direction + 1) * width]
            grad_next = (from_above + grad_state[0], *grad_state[1:])
            grad_step = tuple(np.where(active, grad, 0) for grad in grad_next)
            grad_x, grad_before, step_grads = spec.kind.reference_step_backward(weights, cache, grad_step)
            # Past the end the output is a constant zero: only the carried state's gradient passes.
            grad_state = tuple(np.where(active, before, grad) for before, grad in zip(grad_before, grad_state,
                                                                                       strict=True))
            grad_input[t] += grad_x
            for kind, name in names.items():
                grads[name] += step_grads[kind]
        for grad_initial, value in zip(grad_initials, grad_state, strict=True):
            grad_initial[direction] = value
    return grad_input


_layers = sys.modules[__name__]
forward = partial(_stacking.forward, _layers)
backward = partial(_stacking.backward, _layers)
