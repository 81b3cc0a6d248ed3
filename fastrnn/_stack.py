"""The compiled engine: each layer, all its directions included, is one kernel call.

Nothing here runs per time step. The layers are stacked by the loop every engine shares
(``_stacking``); this module turns one layer's arrays into what the cell's kernel module
takes (``LayerCall``) and decides how many threads it gets. The kernel module is named by
the cell's description and imported on first use, so a cell that is never used compiles
nothing.
"""

from __future__ import annotations

import importlib
import sys
import threading
from dataclasses import dataclass
from functools import partial
from types import ModuleType

import numpy as np

from . import _scratch, _stacking
from ._kernels.native import BACKWARD, FORWARD, ensure_compiled
from ._parallel import get_num_threads
from ._schedule import Schedule
from ._spec import StackSpec

# Steps per chunk when a unidirectional stack runs without keeping state for backward:
# layers advance chunk by chunk, so memory stays O(chunk * B * H) per layer while the
# input projection is still one large GEMM per chunk.
INFERENCE_CHUNK_STEPS = 64

# Below this much recurrent work per layer (T*B*G*H*P multiply-adds over its directions),
# splitting it over threads does not pay: for the Elman cell at (T, B, H) = (100, 4, 64),
# 1.6M, two threads were no faster than one; at (100, 8, 128), 13M, they were 1.1-1.5x faster.
PARALLEL_RECURRENCE_WORK = 4_000_000

_kernel_modules: dict[str, ModuleType] = {}
_import_lock = threading.Lock()


def kernels_of(spec: StackSpec) -> ModuleType:
    """The kernel module of ``spec``'s cell, imported (and its kernels set up) on first use."""
    name = spec.kind.kernel_module
    module = _kernel_modules.get(name)
    if module is None:
        with _import_lock:
            module = _kernel_modules[name] = importlib.import_module(name)
    return module


def as_bytes(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array's memory as bytes (its last axis in bytes), without a copy.

    The layer kernels take every array as bytes: they only hand addresses on, to BLAS and
    to the C-compiled kernels of the layer's dtype.
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


class KernelArrays(dict):
    """A dict of arrays that its owner keeps from call to call: a layer's or a cell's
    parameters or gradients, or ``fastrnn.torch``'s views of a module's tensors.

    Making one layer's arrays into the kernels' byte pairs (``layer_parameters``,
    ``gradient_pairs``) took about 2 µs per layer and call, a tenth of a small layer's
    whole forward. This dict keeps the pairs made from it, and they are made again
    once an entry is no longer the very array they were made from. The pairs die with
    the dict, so they keep no array of a deleted model alive; copies and pickles of the
    dict carry its arrays only.
    """

    def __getstate__(self) -> None:
        return None


def _pairs(spec: StackSpec, layer: int, arrays, flat, absent) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``flat(arrays[name])`` of every parameter kind of one layer, as a pair over its directions.

    The kernels take one array per direction as a pair; a single direction fills both
    slots. Kinds the layer lacks (biases, ``weight_hr``) get ``absent[kind]`` in both.
    With a ``KernelArrays`` the result is kept in it (see there).
    """
    kind_names = spec.kind_names(layer)
    keeps = type(arrays) is KernelArrays
    kept = arrays.__dict__.get("kernel_pairs") if keeps else None
    if kept is not None:
        entry = kept.get((layer, flat))
        if entry is not None:
            sources, pairs = entry
            for name, source in sources:
                if arrays.get(name) is not source:
                    break
            else:
                return pairs
    pairs = {}
    for kind, names in kind_names.items():
        first = flat(arrays[names[0]])
        pairs[kind] = (first, flat(arrays[names[1]])) if len(names) == 2 else (first, first)
    for kind in _OPTIONAL_KINDS:
        if kind not in pairs:
            pairs[kind] = absent[kind]
    if keeps:
        sources = tuple((name, arrays[name]) for names in kind_names.values() for name in names)
        # Only views can be kept: a copy (of an array that is not C-contiguous and
        # writable) would miss later changes to the array it was copied from.
        if all(source.flags.c_contiguous and source.flags.writeable for _, source in sources):
            arrays.__dict__.setdefault("kernel_pairs", {})[(layer, flat)] = (sources, pairs)
    return pairs


_OPTIONAL_KINDS = ("bias_ih", "bias_hh", "weight_hr")
_absent_arrays: dict[tuple[int, np.dtype, bool], dict[str, tuple[np.ndarray, np.ndarray]]] = {}


def _absent(gate_size: int, dtype: np.dtype, for_gradients: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What the kernels get for parameter kinds a layer lacks, made once per size and dtype
    (the kernels never write to them): zero biases, which they add unconditionally, and
    empty arrays for the rest and for every gradient."""
    key = (gate_size, dtype, for_gradients)
    absent = _absent_arrays.get(key)
    if absent is None:
        empty = as_bytes(np.zeros(0, dtype=dtype))
        zeros = empty if for_gradients else as_bytes(np.zeros(gate_size, dtype=dtype))
        absent = {"bias_ih": (zeros, zeros), "bias_hh": (zeros, zeros), "weight_hr": (empty, empty)}
        _absent_arrays[key] = absent
    return absent


def layer_parameters(spec: StackSpec, params, layer: int, dtype) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every parameter kind of one layer as byte pairs. Absent biases are zeros, so the
    kernels add them unconditionally; an absent ``weight_hr`` is empty."""
    return _pairs(spec, layer, params, _kernel_array, _absent(spec.gate_size, dtype, False))


def gradient_pairs(spec: StackSpec, grads, layer: int, dtype) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The gradients of one layer, paired like ``layer_parameters``; empty for absent kinds."""
    return _pairs(spec, layer, grads, as_bytes, _absent(spec.gate_size, dtype, True))


def pieces_per_direction(spec: StackSpec, total_rows: int, batch: int) -> int:
    """How many batch pieces each direction's recurrence is cut into; 0 to stay on one thread.

    Batch rows never interact and the directions are independent, so pieces run
    concurrently with no synchronisation inside the time loop. Small layers stay on the
    calling thread.
    """
    threads = get_num_threads()
    work = total_rows * spec.gate_size * spec.output_size * spec.directions
    if threads == 1 or work < PARALLEL_RECURRENCE_WORK:
        return 0
    pieces = max(1, min(batch, -(-threads // spec.directions)))
    return pieces if pieces * spec.directions > 1 else 0


@dataclass
class LayerCall:
    """One layer's arrays, ready for its cell's kernels: C-contiguous bytes, by name.

    Per-direction arrays come as pairs (one direction fills both slots); stacked states
    as (D, B, width) arrays, one per state of the cell. Sequences are packed rows in the
    layout of ``_schedule``: ``total`` rows, ``steps`` steps, with the schedule's arrays.
    """

    spec: StackSpec
    like: np.ndarray  # an empty array of the layer's dtype: the kernels are compiled per dtype
    steps: int
    batch: int
    total: int
    batch_sizes: np.ndarray  # (steps,) int64
    step_starts: np.ndarray  # (steps,) int64
    lengths: np.ndarray  # (B,) int64, non-increasing
    features: int
    layer_input: np.ndarray  # (total, F)
    params: dict[str, tuple[np.ndarray, np.ndarray]]
    initial: tuple[np.ndarray, ...]
    hidden: np.ndarray  # (total, D*P): written by forward, read by backward
    saved: dict[str, np.ndarray]  # the cell's per-step buffers for backward, as flat bytes; empty in inference
    pieces: int
    # The schedule's ``recurrent_blocks`` of each direction, (2, n, 4) int64, and their (2,)
    # counts: for backward's state products; placeholders in a forward.
    recurrent_blocks: np.ndarray
    block_counts: np.ndarray


_LIKE = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}
_NO_BLOCKS = (np.zeros((2, 1, 4), dtype=np.int64), np.zeros(2, dtype=np.int64))


def layer_call(spec, params, layer, layer_input, initial, hidden, saved, schedule: Schedule, stage: str
                ) -> LayerCall:
    total, features = layer_input.shape
    kernels_of(spec)
    ensure_compiled(layer_input.dtype, stage)
    blocks, block_counts = schedule.recurrent_blocks if stage == BACKWARD else _NO_BLOCKS
    return LayerCall(
        spec=spec, like=_LIKE[layer_input.dtype], steps=schedule.steps, batch=schedule.batch, total=total,
        batch_sizes=schedule.batch_sizes, step_starts=schedule.step_starts, lengths=schedule.lengths,
        features=features,
        layer_input=as_bytes(layer_input), params=layer_parameters(spec, params, layer, layer_input.dtype),
        initial=tuple([as_bytes(state) for state in initial]), hidden=as_bytes(hidden),
        saved={name: as_bytes(buffer).reshape(-1) for name, buffer in saved.items()} if saved else {},
        pieces=pieces_per_direction(spec, total, schedule.batch), recurrent_blocks=blocks, block_counts=block_counts,
    )


def _run_forward_layer(spec, params, layer, layer_input, initial, finals, hidden, saved, schedule) -> None:
    call = layer_call(spec, params, layer, layer_input, initial, hidden, saved, schedule, FORWARD)
    kernels_of(spec).forward(call, tuple([as_bytes(final) for final in finals]))


def _hidden_slot(layer: int) -> int:
    # In inference the hidden states of the layers below the top are thrown away after the
    # call, so their buffers are the thread's: a layer reads the one below while it writes its own.
    return _scratch.HIDDEN_ODD_LAYER if layer % 2 else _scratch.HIDDEN_EVEN_LAYER


def forward_layer(spec, params, layer, layer_input, initial, finals, keep, last, schedule):
    rows = layer_input.shape[0]
    width = spec.directions * spec.output_size
    if last:
        # The top layer's packed output is returned as it is, unless the schedule reorders
        # the batch: then it is only read once more, to unpack it, and a scratch array serves.
        scratch = None
        if schedule.zero_row and not keep:
            scratch = _scratch.array(_hidden_slot(layer), schedule.packed_shape(width), layer_input.dtype)
        hidden = schedule.packed_array(width, layer_input.dtype, scratch)
    elif keep:
        hidden = np.empty((rows, width), dtype=layer_input.dtype)
    else:
        hidden = _scratch.array(_hidden_slot(layer), (rows, width), layer_input.dtype)
    saved = {}
    if keep:
        saved = {
            name: np.empty((rows, spec.directions * saved_width), dtype=layer_input.dtype)
            for name, saved_width in kernels_of(spec).saved_widths(spec).items()
        }
    _run_forward_layer(spec, params, layer, layer_input, initial, finals, hidden, saved, schedule)
    return hidden, saved


def backward_layer(spec, params, layer, layer_input, record, grad_hidden, grad_finals, grad_initials, grads,
                   schedule):
    dtype = layer_input.dtype
    if layer == 0:  # the gradient of the stack's input, to be unpacked
        grad_input = schedule.packed_array(layer_input.shape[1], dtype)
    else:
        grad_input = np.empty(layer_input.shape, dtype=dtype)
    call = layer_call(spec, params, layer, layer_input, record.initial, record.hidden, record.saved, schedule,
                       BACKWARD)
    kernels_of(spec).backward(
        call, as_bytes(grad_hidden), tuple(as_bytes(grad) for grad in grad_finals),
        tuple(as_bytes(grad) for grad in grad_initials), gradient_pairs(spec, grads, layer, dtype),
        as_bytes(grad_input),
    )
    return grad_input


_layers = sys.modules[__name__]
_stacked_forward = partial(_stacking.forward, _layers)


@dataclass
class Record:
    schedule: Schedule
    stack: _stacking.StackRecord | None  # None when every sequence is empty
    input_size: int
    # From a prepared forward (``_prepared``): its kernel arguments, for a prepared backward.
    prepared: object = None


def forward(spec, x, initial, params, dropout, training, requires_grad, generator, lengths):
    steps, batch, _ = x.shape
    if lengths is None and spec.num_layers == 1:
        return _forward_one_layer(spec, x, initial, params, requires_grad)
    schedule = Schedule.full(steps, batch) if lengths is None else Schedule.of_lengths(lengths, steps)
    if schedule.total == 0:
        # Every sequence is empty: nothing runs, each final state is its initial state.
        output = np.zeros((steps, batch, spec.directions * spec.output_size), dtype=x.dtype)
        finals = tuple(state.copy() for state in initial)
        return output, finals, Record(schedule, None, spec.input_size) if requires_grad else None
    use_dropout = training and dropout > 0.0 and spec.num_layers > 1
    # Only training keeps the packed input (for backward); inference packs into scratch.
    scratch = None
    if not requires_grad and schedule.order is not None:
        scratch = _scratch.array(_scratch.PACKED_INPUT, (schedule.total, x.shape[-1]), x.dtype)
    packed = schedule.pack(x, scratch)
    initial = tuple(schedule.to_rows(state) for state in initial)
    if not requires_grad and not use_dropout and spec.directions == 1 and spec.num_layers > 1:
        output, finals, record = _forward_chunked(spec, packed, initial, params, schedule)
    else:
        output, finals, record = _stacked_forward(
            spec, packed, initial, params, dropout, training, requires_grad, generator, schedule
        )
    finals = tuple(schedule.from_rows(final) for final in finals)
    return schedule.unpack(output), finals, Record(schedule, record, spec.input_size) if requires_grad else None


def _forward_one_layer(spec, x, initial, params, requires_grad):
    """``forward`` of one layer over full-length sequences, the commonest call, in fewer steps.

    It does what ``_stacking.forward`` does for a single layer (which has no dropout) and
    leaves the same record, so ``backward`` is shared; with full lengths there is nothing
    to pack, reorder or unpack. At small sizes the Python around the kernel is most of a
    call: on an AVX2 EPYC, where the kernel of a one-step (I, H) = (2, 2) forward takes
    4 µs, the whole call took 45 µs, and 30 µs with this route and the front end's cuts.
    """
    steps, batch, features = x.shape
    schedule = Schedule.full(steps, batch)
    layer_input = x.reshape(steps * batch, features)  # the front end passes x C-contiguous
    finals = tuple([np.empty(shape, dtype=x.dtype) for shape in spec.state_shapes(batch)])
    hidden, saved = forward_layer(spec, params, 0, layer_input, initial, finals, requires_grad, True, schedule)
    output = hidden.reshape(steps, batch, hidden.shape[1])
    if not requires_grad:
        return output, finals, None
    layers = [_stacking.LayerRecord(layer_input, hidden, initial, None, saved)]
    return output, finals, Record(schedule, _stacking.StackRecord(spec, params, layers, schedule), features)


def backward(record: Record, grad_output, grad_finals, grads):
    schedule = record.schedule
    if record.stack is None:
        grad_x = np.zeros((schedule.padded_steps, schedule.batch, record.input_size), dtype=grad_output.dtype)
        return grad_x, tuple(grad.copy() for grad in grad_finals)
    grad_finals = tuple(schedule.to_rows(grad) for grad in grad_finals)
    grad_x, grad_initials = _stacking.backward(_layers, record.stack, schedule.pack(grad_output), grad_finals, grads)
    return schedule.unpack(grad_x), tuple(schedule.from_rows(grad) for grad in grad_initials)


def _forward_chunked(spec, x, initial, params, schedule: Schedule):
    """Inference for a unidirectional stack: all layers advance one chunk of steps at a time.

    ``x`` is packed; a chunk of steps is a contiguous block of its rows, and a sequence
    that ends before a chunk passes its state through it unchanged.
    """
    output = schedule.packed_array(spec.output_size, x.dtype)
    chunk = min(INFERENCE_CHUNK_STEPS, schedule.steps)
    scratch = [np.empty((chunk * schedule.batch, spec.output_size), dtype=x.dtype) for _ in range(spec.num_layers - 1)]
    state = tuple(value.copy() for value in initial)
    finals = tuple(np.empty_like(value) for value in initial)
    for start in range(0, schedule.steps, chunk):
        stop = min(start + chunk, schedule.steps)
        rows = schedule.packed_rows(start, stop)
        steps = schedule.chunk(start, stop)
        layer_input = x[rows]
        for layer in range(spec.num_layers):
            last = layer == spec.num_layers - 1
            hidden = output[rows] if last else scratch[layer][: rows.stop - rows.start]
            stacked = slice(layer, layer + 1)
            _run_forward_layer(
                spec, params, layer, layer_input, tuple(value[stacked] for value in state),
                tuple(final[stacked] for final in finals), hidden, {}, steps,
            )
            for value, final in zip(state, finals, strict=True):
                value[layer] = final[layer]
            layer_input = hidden
    return output, finals, None
