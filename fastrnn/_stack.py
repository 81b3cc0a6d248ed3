"""The compiled engine: stacks layer kernels into a network, with its dropout.

Nothing here runs per time step: each layer, all its directions included, is one kernel
call over the whole sequence. Cell kinds plug in through ``CELL_KERNELS``; this module only knows how layers
connect (inputs, dropout, the two directions) and what backward needs to keep.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ._dropout import dropout_mask
from ._kernels import elman
from ._parallel import get_num_threads, run_kernel
from ._spec import StackSpec

CELL_KERNELS = {"rnn_tanh": elman, "rnn_relu": elman}

# Steps per chunk when a unidirectional stack runs without keeping state for backward:
# layers advance chunk by chunk, so memory stays O(chunk * B * H) per layer while the
# input projection is still one large GEMM per chunk.
INFERENCE_CHUNK_STEPS = 64

# Below this much recurrent work per layer (T*B*H*H multiply-adds over its directions),
# splitting it over threads does not pay: at (T, B, H) = (100, 4, 64), 1.6M, two threads
# were no faster than one; at (100, 8, 128), 13M, they were 1.1-1.5x faster.
PARALLEL_RECURRENCE_WORK = 4_000_000

# In inference the hidden states of the layers below the top are thrown away after the
# call, so each thread keeps their buffers for its next call. A fresh buffer costs a page
# fault per 4 KiB page the first time the kernel writes it, whenever the allocator has
# handed the memory back to the system: at (T, B, H) = (100, 16, 2x128), 800 faults took
# a 2-layer bidirectional forward from 1.2-1.3 to 2.1-2.3 ms. Larger buffers are not
# kept, so that memory stays bounded; their compute grows faster than their page count.
SCRATCH_LIMIT_BYTES = 16 * 2**20
_scratch = threading.local()


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


def _as_bytes(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array's memory as bytes (its last axis in bytes), without a copy.

    The layer kernels take every array as bytes plus the float size: they only hand
    addresses on to the per-dtype kernels, so one compilation serves both dtypes.
    """
    if not array.flags.c_contiguous:
        raise AssertionError("kernel arrays are C-contiguous")  # the kernels read them by address
    return array.view(np.uint8)


def _kernel_array(array: np.ndarray) -> np.ndarray:
    """C-contiguous, writable bytes: the one array type the kernels' per-direction pairs hold.

    (numba types a read-only array apart, and would compile the kernels again for it.)
    """
    flags = array.flags
    if not (flags.c_contiguous and flags.writeable):
        array = np.array(array, order="C", copy=True)
    return array.view(np.uint8)


def _direction_pairs(spec: StackSpec, layer: int, flat) -> list[tuple[np.ndarray, np.ndarray]]:
    """``flat(name)`` of each kind of parameter of one layer, as a pair over its directions.

    The kernels take one array per direction as a pair; a single direction fills both slots.
    """
    pairs = []
    for names in spec.kind_names(layer):
        first = flat(names[0])
        pairs.append((first, flat(names[1])) if len(names) == 2 else (first, first))
    return pairs


def _layer_parameters(spec: StackSpec, params, layer: int, dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    """[weights_ih, weights_hh, biases_ih, biases_hh] of one layer, each a pair over its directions.

    Without bias the biases are zeros, so the kernels add them unconditionally.
    """
    pairs = _direction_pairs(spec, layer, lambda name: _kernel_array(params[name]))
    if not spec.bias:
        zeros = _as_bytes(np.zeros(spec.hidden_size, dtype=dtype))
        pairs += [(zeros, zeros)] * 2
    return pairs


def _gradient_pairs(spec: StackSpec, grads, layer: int, dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    """The flat gradients of one layer, paired like ``_layer_parameters``; empty for absent biases."""
    pairs = _direction_pairs(spec, layer, lambda name: _as_bytes(grads[name]))
    if not spec.bias:
        unused = _as_bytes(np.zeros(0, dtype=dtype))
        pairs += [(unused, unused)] * 2
    return pairs


def _pieces_per_direction(spec: StackSpec, steps: int, batch: int) -> int:
    """How many batch pieces each direction's recurrence is cut into; 0 to stay on one thread.

    Batch rows never interact and the directions are independent, so pieces run
    concurrently with no synchronisation inside the time loop. Small layers stay on the
    calling thread.
    """
    threads = get_num_threads()
    hidden_size = spec.hidden_size
    work = steps * batch * hidden_size * hidden_size * spec.directions
    if threads == 1 or work < PARALLEL_RECURRENCE_WORK:
        return 0
    pieces = max(1, min(batch, -(-threads // spec.directions)))
    return pieces if pieces * spec.directions > 1 else 0


def _scratch_array(slot: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array that this thread reuses across calls, ``slot`` telling two apart."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes > SCRATCH_LIMIT_BYTES:
        return np.empty(shape, dtype=dtype)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buffer = buffers.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = buffers[slot] = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def _forward_layer(spec, params, layer, layer_input, h0, hidden, h_n):
    """Fill ``hidden`` (T, B, D*H) and ``h_n`` (D, B, H) for one layer."""
    kernels = CELL_KERNELS[spec.cell]
    steps, batch, features = layer_input.shape
    directions = spec.directions
    weights_ih, weights_hh, biases_ih, biases_hh = _layer_parameters(spec, params, layer, layer_input.dtype)
    run_kernel(
        kernels.forward_layer, kernels.forward_layer_parallel, _pieces_per_direction(spec, steps, batch),
        layer_input.dtype.itemsize, _as_bytes(layer_input), features, directions, weights_ih, weights_hh, biases_ih,
        biases_hh, _as_bytes(h0), _as_bytes(hidden), steps, batch, spec.hidden_size,
        spec.cell == "rnn_relu", _as_bytes(h_n),
    )


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
        if requires_grad or layer == spec.num_layers - 1:
            hidden = np.empty((steps, batch, width), dtype=x.dtype)
        else:
            hidden = _scratch_array(layer % 2, (steps, batch, width), x.dtype)
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


def backward(state: StackState, grad_output, grad_h_n, grads):
    spec, params = state.spec, state.params
    kernels = CELL_KERNELS[spec.cell]
    directions = spec.directions
    dtype = grad_output.dtype
    grad_hx = np.empty_like(grad_h_n)
    grad_hidden = grad_output  # owned by us: the front end hands over a fresh copy
    for layer in reversed(range(spec.num_layers)):
        saved = state.layers[layer]
        if saved.layer_input is not None:
            layer_input = saved.layer_input
        else:
            layer_input = state.layers[layer - 1].hidden * saved.input_mask
        steps, batch, features = layer_input.shape
        weights_ih, weights_hh, _, _ = _layer_parameters(spec, params, layer, dtype)
        grads_weight_ih, grads_weight_hh, grads_bias_ih, grads_bias_hh = _gradient_pairs(spec, grads, layer, dtype)
        rows = slice(layer * directions, (layer + 1) * directions)
        grad_input = np.empty((steps, batch, features), dtype=dtype)
        run_kernel(
            kernels.backward_layer, kernels.backward_layer_parallel, _pieces_per_direction(spec, steps, batch),
            dtype.itemsize, _as_bytes(layer_input), features, directions, weights_ih, weights_hh,
            _as_bytes(saved.h0), _as_bytes(saved.hidden), _as_bytes(grad_hidden),
            _as_bytes(grad_h_n[rows]), _as_bytes(grad_hx[rows]), steps, batch,
            spec.hidden_size, spec.cell == "rnn_relu", grads_weight_ih, grads_weight_hh, grads_bias_ih, grads_bias_hh,
            spec.bias, _as_bytes(grad_input),
        )
        if saved.input_mask is not None:
            grad_input *= saved.input_mask
        grad_hidden = grad_input
    return grad_hidden, grad_hx
