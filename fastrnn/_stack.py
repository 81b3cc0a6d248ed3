"""The compiled engine: stacks layer-direction kernels into layers, directions and dropout.

Nothing here runs per time step: each layer-direction is one kernel call over the whole
sequence. Cell kinds plug in through ``CELL_KERNELS``; this module only knows how layers
connect (inputs, dropout, the two directions) and what backward needs to keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from ._dropout import dropout_mask
from ._kernels import elman
from ._parallel import blas_single_threaded, get_num_threads, run_tasks
from ._spec import StackSpec

CELL_KERNELS = {"rnn_tanh": elman, "rnn_relu": elman}

# Steps per chunk when a unidirectional stack runs without keeping state for backward:
# layers advance chunk by chunk, so memory stays O(chunk * B * H) per layer while the
# input projection is still one large GEMM per chunk.
INFERENCE_CHUNK_STEPS = 64

# Below this much recurrent work per layer (T*B*H*H multiply-adds over its directions),
# handing part of it to another thread costs more than it saves.
PARALLEL_RECURRENCE_WORK = 24_000_000


@dataclass
class LayerState:
    layer_input: np.ndarray | None  # (T, B, F); None when rebuilt from the layer below
    hidden: np.ndarray  # (T, B, D*H): every h_t, the only per-step memory kept
    h0: np.ndarray  # (D, B, H)
    input_mask: np.ndarray | None  # dropout applied to this layer's input


@dataclass
class StackState:
    spec: StackSpec
    params: dict[str, np.ndarray]
    layers: list[LayerState]


def _direction_weights(spec: StackSpec, params, layer: int, direction: int, dtype):
    """Flat, contiguous (weight_ih, weight_hh, bias_ih, bias_hh) of one layer-direction.

    Without bias the biases are zeros, so the kernels add them unconditionally.
    """
    names = spec.direction_names(layer, direction)
    weights = tuple(np.ascontiguousarray(params[name]).ravel() for name in names)
    if spec.bias:
        return weights
    zeros = np.zeros(spec.hidden_size, dtype=dtype)
    return (*weights, zeros, zeros)


def _ranges(count: int, pieces: int) -> list[tuple[int, int]]:
    """``count`` items cut into ``pieces`` nearly equal (first, length) ranges."""
    pieces = max(1, min(pieces, count))
    return [(i * count // pieces, (i + 1) * count // pieces - i * count // pieces) for i in range(pieces)]


def _pieces_per_direction(spec: StackSpec, steps: int, batch: int) -> int:
    """How many batch pieces each direction's recurrence is cut into; 0 to stay on one thread.

    Batch rows never interact and the directions are independent, so pieces run
    concurrently with no synchronisation inside the time loop. Small layers stay on the
    calling thread (handing work over costs tens of microseconds), and so do layers whose
    per-step product is large enough for BLAS's own threads to share it well.
    """
    threads = get_num_threads()
    hidden_size = spec.hidden_size
    work = steps * batch * hidden_size * hidden_size * spec.directions
    if threads == 1 or work < PARALLEL_RECURRENCE_WORK:
        return 0
    if batch * hidden_size * hidden_size >= CELL_KERNELS[spec.cell].LARGE_STEP_WORK:
        return 0
    pieces = max(1, min(batch, -(-threads // spec.directions)))
    return pieces if pieces * spec.directions > 1 else 0


def _forward_layer(spec, params, layer, layer_input, h0, hidden, h_n):
    """Fill ``hidden`` (T, B, D*H) and ``h_n`` (D, B, H) for one layer."""
    kernels = CELL_KERNELS[spec.cell]
    steps, batch, features = layer_input.shape
    width = hidden.shape[2]
    hidden_size = spec.hidden_size
    flat_input = layer_input.reshape(-1)
    flat_hidden = hidden.reshape(-1)
    use_relu = spec.cell == "rnn_relu"
    weights = [_direction_weights(spec, params, layer, d, flat_input.dtype) for d in range(spec.directions)]
    pieces = _pieces_per_direction(spec, steps, batch)
    if not pieces:
        for direction, (weight_ih, weight_hh, bias_ih, bias_hh) in enumerate(weights):
            kernels.forward_direction(
                flat_input, features, weight_ih, weight_hh, bias_ih, bias_hh, h0[direction].reshape(-1),
                flat_hidden, steps, batch, width, direction * hidden_size, direction == 1, use_relu,
                h_n[direction].reshape(-1),
            )
        return
    # Each worker projects its own rows step by step, so it needs nothing from the others.
    recurrences = [
        partial(
            kernels.recur, flat_input, features, weight_ih, bias_ih, bias_hh, True, weight_hh,
            h0[direction].reshape(-1), flat_hidden, steps, batch, first, rows, hidden_size, width,
            direction * hidden_size, direction == 1, use_relu, h_n[direction].reshape(-1), True,
        )
        for direction, (weight_ih, weight_hh, bias_ih, bias_hh) in enumerate(weights)
        for first, rows in _ranges(batch, pieces)
    ]
    with blas_single_threaded():
        run_tasks(recurrences, parallel=True)


def forward(spec, x, h0, params, dropout, training, requires_grad, generator):
    steps, batch, _ = x.shape
    width = spec.directions * spec.hidden_size
    h_n = np.empty((spec.num_layers * spec.directions, batch, spec.hidden_size), dtype=x.dtype)
    use_dropout = training and dropout > 0.0 and spec.num_layers > 1
    if not requires_grad and not use_dropout and spec.directions == 1 and spec.num_layers > 1:
        return _forward_chunked(spec, x, h0, params, h_n), h_n, None
    if use_dropout and generator is None:
        generator = np.random.default_rng()
    layers = []
    layer_input, input_mask = x, None
    for layer in range(spec.num_layers):
        hidden = np.empty((steps, batch, width), dtype=x.dtype)
        rows = slice(layer * spec.directions, (layer + 1) * spec.directions)
        _forward_layer(spec, params, layer, layer_input, h0[rows], hidden, h_n[rows])
        if requires_grad:
            kept_input = layer_input if input_mask is None else None
            layers.append(LayerState(kept_input, hidden, h0[rows], input_mask))
        if use_dropout and layer < spec.num_layers - 1:
            input_mask = dropout_mask(generator, hidden.shape, dropout, x.dtype)
            layer_input = hidden * input_mask
        else:
            layer_input, input_mask = hidden, None
    state = StackState(spec, params, layers) if requires_grad else None
    return layer_input, h_n, state


def _forward_chunked(spec, x, h0, params, h_n):
    """Inference for a unidirectional stack: all layers advance one chunk of steps at a time."""
    steps, batch, _ = x.shape
    output = np.empty((steps, batch, spec.hidden_size), dtype=x.dtype)
    chunk = min(INFERENCE_CHUNK_STEPS, steps)
    scratch = [
        np.empty((chunk, batch, spec.hidden_size), dtype=x.dtype) for _ in range(spec.num_layers - 1)
    ]
    state = h0.copy()
    for start in range(0, steps, chunk):
        stop = min(start + chunk, steps)
        layer_input = x[start:stop]
        for layer in range(spec.num_layers):
            last = layer == spec.num_layers - 1
            hidden = output[start:stop] if last else scratch[layer][: stop - start]
            _forward_layer(spec, params, layer, layer_input, state[layer : layer + 1], hidden, h_n[layer : layer + 1])
            state[layer] = h_n[layer]
            layer_input = hidden
    return output


def _input_gradient_rows(kernels, flat_grad, width, hidden_size, weights_ih, features, grad_input, first, rows):
    """dLoss/d(layer input) for rows ``first:first+rows``, summed over the directions."""
    for direction, weight_ih in enumerate(weights_ih):
        kernels.input_gradient(
            flat_grad, width, direction * hidden_size, weight_ih, hidden_size, features, first, rows,
            0.0 if direction == 0 else 1.0, grad_input,
        )


def backward(state: StackState, grad_output, grad_h_n, grads):
    spec, params = state.spec, state.params
    kernels = CELL_KERNELS[spec.cell]
    use_relu = spec.cell == "rnn_relu"
    grad_hx = np.empty_like(grad_h_n)
    grad_hidden = grad_output  # owned by us: the front end hands over a fresh copy
    for layer in reversed(range(spec.num_layers)):
        saved = state.layers[layer]
        if saved.layer_input is not None:
            layer_input = saved.layer_input
        else:
            layer_input = state.layers[layer - 1].hidden * saved.input_mask
        steps, batch, features = layer_input.shape
        width = saved.hidden.shape[2]
        flat_input = layer_input.reshape(-1)
        flat_grad = grad_hidden.reshape(-1)
        weights = [_direction_weights(spec, params, layer, d, grad_output.dtype) for d in range(spec.directions)]
        grad_input = np.empty((steps, batch, features), dtype=grad_output.dtype)
        pieces = _pieces_per_direction(spec, steps, batch)
        parallel = pieces > 0
        hidden_size = spec.hidden_size
        backprops, gradients = [], []
        for direction in range(spec.directions):
            names = spec.direction_names(layer, direction)
            row = layer * spec.directions + direction
            offset = direction * hidden_size
            backprops += [
                partial(
                    kernels.backpropagate, weights[direction][1], saved.hidden.reshape(-1), flat_grad,
                    grad_h_n[row].reshape(-1), steps, batch, first, rows, hidden_size, width, offset,
                    direction == 1, use_relu, grad_hx[row].reshape(-1), parallel,
                )
                for first, rows in _ranges(batch, max(pieces, 1))
            ]
            if spec.bias:
                grad_bias_ih, grad_bias_hh = grads[names[2]].reshape(-1), grads[names[3]].reshape(-1)
            else:
                grad_bias_ih = grad_bias_hh = np.zeros(0, dtype=grad_output.dtype)
            gradients += [
                partial(
                    kernels.parameter_gradients, flat_input, features, saved.h0[direction].reshape(-1),
                    saved.hidden.reshape(-1), flat_grad, steps, batch, hidden_size, width, offset,
                    direction == 1, first, units, grads[names[0]].reshape(-1),
                    grads[names[1]].reshape(-1), grad_bias_ih, grad_bias_hh, spec.bias, parallel,
                )
                for first, units in _ranges(hidden_size, max(pieces, 1))
            ]

        lanes = get_num_threads() if parallel else 1
        flat_grad_input = grad_input.reshape(-1)
        gradients += [
            partial(
                _input_gradient_rows, kernels, flat_grad, width, hidden_size, [w[0] for w in weights],
                features, flat_grad_input, first, rows,
            )
            for first, rows in _ranges(steps * batch, lanes)
        ]
        if parallel:
            with blas_single_threaded():
                run_tasks(backprops, parallel=True)
                run_tasks(gradients, parallel=True)
        else:
            run_tasks(backprops + gradients, parallel=False)
        if saved.input_mask is not None:
            grad_input *= saved.input_mask
        grad_hidden = grad_input
    return grad_hidden, grad_hx
