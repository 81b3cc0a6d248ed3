"""The loop that stacks layers and applies dropout between them, shared by every engine.

An engine supplies two functions per layer, ``forward_layer`` and ``backward_layer``
(see ``LayerEngine``); this loop connects the layers: each layer's input, the dropout
mask on it, which rows of the stacked states belong to it, and what backward keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._dropout import dropout_mask
from ._spec import StackSpec


class LayerEngine(Protocol):
    def forward_layer(self, spec: StackSpec, params, layer: int, layer_input: np.ndarray, initial: tuple,
                      finals: tuple, keep: bool, last: bool, lengths: Any) -> tuple[np.ndarray, Any]:
        """Run one layer: fill ``finals`` (one (D, B, width) array per state) and return
        ``(hidden, saved)``, hidden laid out as ``layer_input`` with D*P columns, and what
        this engine's backward needs (anything; None unless ``keep``). With neither
        ``keep`` nor ``last`` the hidden states are only read by the next layer.
        ``lengths`` is the engine's own description of the sequences' lengths, passed on
        as the engine's ``forward`` got it."""

    def backward_layer(self, spec: StackSpec, params, layer: int, layer_input: np.ndarray, record: LayerRecord,
                       grad_hidden: np.ndarray, grad_finals: tuple, grad_initials: tuple, grads,
                       lengths: Any) -> np.ndarray:
        """Differentiate one layer: ``grad_hidden`` (laid out as ``hidden``, owned by the callee) is the
        gradient arriving at its hidden states; fill ``grad_initials``, accumulate into
        ``grads`` and return the gradient of ``layer_input``."""


@dataclass
class LayerRecord:
    layer_input: np.ndarray | None  # as the layer got it; None when rebuilt from the layer below
    hidden: np.ndarray  # every h_t, laid out as the layer's input with D*P columns
    initial: tuple  # one (D, B, width) array per state
    input_mask: np.ndarray | None  # dropout applied to this layer's input
    saved: Any  # the engine's own record


@dataclass
class StackRecord:
    spec: StackSpec
    params: dict[str, np.ndarray]
    layers: list[LayerRecord]
    lengths: Any


def _layer_rows(spec: StackSpec, layer: int) -> slice:
    return slice(layer * spec.directions, (layer + 1) * spec.directions)


def forward(engine: LayerEngine, spec: StackSpec, x, initial, params, dropout, training, requires_grad, generator,
            lengths=None):
    """``(output, finals, record)`` for the whole stack; ``record`` is None unless ``requires_grad``.

    ``x`` is laid out as the engine's layers take it; ``initial`` holds one (L*D, B, width)
    array per state.
    """
    batch = initial[0].shape[1]
    finals = tuple(np.empty(shape, dtype=x.dtype) for shape in spec.state_shapes(batch))
    use_dropout = training and dropout > 0.0 and spec.num_layers > 1
    if use_dropout and generator is None:
        generator = np.random.default_rng()
    layers = []
    layer_input, input_mask = x, None
    for layer in range(spec.num_layers):
        rows = _layer_rows(spec, layer)
        layer_initial = tuple(state[rows] for state in initial)
        last = layer == spec.num_layers - 1
        hidden, saved = engine.forward_layer(
            spec, params, layer, layer_input, layer_initial, tuple(final[rows] for final in finals),
            requires_grad, last, lengths,
        )
        if requires_grad:
            kept_input = layer_input if input_mask is None else None
            layers.append(LayerRecord(kept_input, hidden, layer_initial, input_mask, saved))
        if use_dropout and not last:
            input_mask = dropout_mask(generator, hidden.shape, dropout, x.dtype)
            layer_input = hidden * input_mask
        else:
            layer_input, input_mask = hidden, None
    record = StackRecord(spec, params, layers, lengths) if requires_grad else None
    return layer_input, finals, record


def backward(engine: LayerEngine, record: StackRecord, grad_output, grad_finals, grads):
    """``(grad_x, grad_initials)``; ``grad_output`` is owned by the callee, ``grads`` accumulated."""
    spec = record.spec
    grad_initials = tuple(np.empty_like(grad) for grad in grad_finals)
    grad_hidden = grad_output
    for layer in reversed(range(spec.num_layers)):
        layer_record = record.layers[layer]
        layer_input = layer_record.layer_input
        if layer_input is None:
            layer_input = record.layers[layer - 1].hidden * layer_record.input_mask
        rows = _layer_rows(spec, layer)
        grad_input = engine.backward_layer(
            spec, record.params, layer, layer_input, layer_record, grad_hidden,
            tuple(grad[rows] for grad in grad_finals), tuple(grad[rows] for grad in grad_initials), grads,
            record.lengths,
        )
        if layer_record.input_mask is not None:
            grad_input *= layer_record.input_mask
        grad_hidden = grad_input
    return grad_hidden, grad_initials
