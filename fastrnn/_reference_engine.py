"""The plain-NumPy engine: a per-step loop vectorised over the batch.

It is the oracle every test compares against and the baseline every benchmark is
measured against, so it is written to be read, not to be fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._dropout import dropout_mask
from ._spec import StackSpec


def _activate(pre_activation: np.ndarray, cell: str) -> np.ndarray:
    if cell == "rnn_relu":
        return np.maximum(pre_activation, 0)
    return np.tanh(pre_activation)


def _activation_grad(hidden: np.ndarray, cell: str) -> np.ndarray:
    """d act / d pre-activation, in terms of the activation's output."""
    if cell == "rnn_relu":
        return (hidden > 0).astype(hidden.dtype)
    return 1 - hidden * hidden


def _weights(spec: StackSpec, params, layer: int, direction: int):
    names = spec.direction_names(layer, direction)
    weight_ih, weight_hh = params[names[0]], params[names[1]]
    bias = params[names[2]] + params[names[3]] if spec.bias else 0
    return weight_ih, weight_hh, bias


def _time_order(steps: int, direction: int) -> list[int]:
    return list(range(steps)) if direction == 0 else list(reversed(range(steps)))


@dataclass
class ReferenceState:
    spec: StackSpec
    params: dict
    layer_inputs: list  # (T, B, F) after dropout
    hiddens: list  # (T, B, D*H)
    h0: np.ndarray
    input_masks: list


def forward(spec, x, h0, params, dropout, training, requires_grad, generator):
    steps, batch, _ = x.shape
    h_n = np.empty((spec.num_layers * spec.directions, batch, spec.hidden_size), dtype=x.dtype)
    use_dropout = training and dropout > 0.0 and spec.num_layers > 1
    if use_dropout and generator is None:
        generator = np.random.default_rng()
    layer_inputs, hiddens, masks = [], [], []
    layer_input = x
    mask = None
    for layer in range(spec.num_layers):
        per_direction = []
        for direction in range(spec.directions):
            weight_ih, weight_hh, bias = _weights(spec, params, layer, direction)
            row = layer * spec.directions + direction
            h = h0[row]
            states = [None] * steps
            for t in _time_order(steps, direction):
                h = _activate(layer_input[t] @ weight_ih.T + h @ weight_hh.T + bias, spec.cell)
                states[t] = h
            h_n[row] = h
            per_direction.append(np.stack(states))
        hidden = np.concatenate(per_direction, axis=2)
        layer_inputs.append(layer_input)
        hiddens.append(hidden)
        masks.append(mask)
        if use_dropout and layer < spec.num_layers - 1:
            mask = dropout_mask(generator, hidden.shape, dropout, x.dtype)
            layer_input = hidden * mask
        else:
            layer_input, mask = hidden, None
    state = ReferenceState(spec, params, layer_inputs, hiddens, h0, masks) if requires_grad else None
    return layer_input, h_n, state


def backward(state: ReferenceState, grad_output, grad_h_n, grads):
    spec, params = state.spec, state.params
    hidden_size = spec.hidden_size
    grad_hx = np.empty_like(grad_h_n)
    grad_above = grad_output
    for layer in reversed(range(spec.num_layers)):
        layer_input, hidden = state.layer_inputs[layer], state.hiddens[layer]
        steps = hidden.shape[0]
        grad_input = np.zeros_like(layer_input)
        for direction in range(spec.directions):
            names = spec.direction_names(layer, direction)
            weight_ih, weight_hh, _ = _weights(spec, params, layer, direction)
            columns = slice(direction * hidden_size, (direction + 1) * hidden_size)
            row = layer * spec.directions + direction
            order = _time_order(steps, direction)
            grad_h = grad_h_n[row]
            for position in reversed(range(steps)):
                t = order[position]
                h = hidden[t][:, columns]
                h_previous = state.h0[row] if position == 0 else hidden[order[position - 1]][:, columns]
                grad_pre = (grad_above[t][:, columns] + grad_h) * _activation_grad(h, spec.cell)
                grads[names[0]] += grad_pre.T @ layer_input[t]
                grads[names[1]] += grad_pre.T @ h_previous
                if spec.bias:
                    grads[names[2]] += grad_pre.sum(axis=0)
                    grads[names[3]] += grad_pre.sum(axis=0)
                grad_input[t] += grad_pre @ weight_ih
                grad_h = grad_pre @ weight_hh
            grad_hx[row] = grad_h
        if state.input_masks[layer] is not None:
            grad_input = grad_input * state.input_masks[layer]
        grad_above = grad_input
    return grad_above, grad_hx
