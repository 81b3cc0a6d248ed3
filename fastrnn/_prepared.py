"""One-layer inference calls, prepared once per parameters, input shape and thread.

At small sizes the Python around a kernel is most of a call. On an AVX2 EPYC the serial
kernel of a (T, B, I, H) = (100, 1, 32, 64) Elman forward took 45-48 µs and the whole
``layer(x)`` 95-100 µs: building the call's arguments (the front end's layout, the
schedule, the ``LayerCall``, the kernel module's argument list) cost as much as the
recurrence. A model run step by step (``layer(x_t, h)`` with T = 1, or any cell) pays that
at every step.

The first inference call of a shape takes the general route, then leaves a prepared call
here: the serial kernel's whole argument list, as the cell's ``forward_arguments`` makes it,
with the places of the call's own arrays (input, initial states, output, final states)
noted. A later call of that shape on the same thread checks what the general route would
(the input's and states' type, dtype and shape, and that every parameter is still the
array it was prepared with), puts its arrays in those places and calls the kernel. The
parameters are passed as views, so changes made to them in place are seen; an assigned
array fails the check. Any call that does not fit takes the general route, which
validates it and raises as before, so this module never raises for a caller's mistake.

Only calls the serial kernel runs alone are prepared, which keeps each argument list's
buffers small. A prepared call is the preparing thread's: its argument list holds that
thread's scratch buffers (``_scratch``).
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from . import _stack
from ._kernels.native import FORWARD
from ._parallel import blas_single_threaded, get_num_threads
from ._schedule import Schedule

# Prepared calls kept per parameter set and thread; past it they are dropped and made again.
MAX_SHAPES = 8


class _Place:
    """Stands in the argument list for one of a call's own arrays while it is prepared."""


@dataclasses.dataclass(frozen=True, eq=False)
class _Prepared:
    spec: object
    dtype: np.dtype
    layout: object  # the front end's Layout of the input
    x_shape: tuple[int, ...]
    state_shapes: tuple[tuple[int, ...], ...]  # of given states, in the caller's layout
    input_is_rows: bool  # whether a C-contiguous input is already in the kernel's row order
    rows_shape: tuple[int, int]  # the input as the kernel's (T*B, I) rows
    hidden_shape: tuple[int, int]  # the output as the kernel's rows
    output_shape: tuple[int, int, int]  # time-major
    sources: tuple[tuple[str, np.ndarray], ...]  # every parameter, as the arrays prepared with
    zero_states: tuple[np.ndarray, ...]  # read by the kernel only, never written
    kernel: object
    arguments: list
    input_place: int
    initial_places: tuple[int, ...]
    hidden_place: int
    final_places: tuple[tuple[int, tuple[int, int, int]], ...]  # each with its time-major shape

    def run(self, params, x: np.ndarray, hx):
        """``(output, finals, None)`` as ``run_forward`` returns it, or None if the call does not fit."""
        if x.dtype is not self.dtype or x.shape != self.x_shape:
            return None
        for name, source in self.sources:
            if params.get(name) is not source:
                return None
        if _no_states(hx):
            initial = self.zero_states
        else:
            initial = self._given_states(hx)
            if initial is None:
                return None
        if not (x.flags.c_contiguous and self.input_is_rows):
            x = np.ascontiguousarray(self.layout.to_time_major(x))
        arguments = self.arguments.copy()
        arguments[self.input_place] = x.reshape(self.rows_shape).view(np.uint8)
        for place, state in zip(self.initial_places, initial, strict=True):
            arguments[place] = state
        hidden = np.empty(self.hidden_shape, dtype=self.dtype)
        arguments[self.hidden_place] = hidden.view(np.uint8)
        finals = []
        for place, shape in self.final_places:
            final = np.empty(shape, dtype=self.dtype)
            arguments[place] = final.view(np.uint8)
            finals.append(final)
        if get_num_threads() == 1:
            with blas_single_threaded():  # as ``run_kernel`` holds BLAS on one thread
                self.kernel(*arguments, 1, False)
        else:
            self.kernel(*arguments, 1, False)
        if self.layout.batched:
            output = hidden.reshape(self.output_shape)
            if self.layout.batch_first:
                output = output.transpose(1, 0, 2)
            return output, tuple(finals), None
        return hidden, tuple([final.reshape(final.shape[0], -1) for final in finals]), None

    def _given_states(self, hx):
        """The caller's states as the kernel's bytes, or None if they are not what was prepared for."""
        values = (hx,) if len(self.state_shapes) == 1 else hx
        if len(self.state_shapes) > 1 and (type(values) not in (tuple, list) or len(values) != len(self.state_shapes)):
            return None
        states = []
        for value, shape in zip(values, self.state_shapes, strict=True):
            if type(value) is not np.ndarray or value.dtype is not self.dtype or value.shape != shape:
                return None
            state = self.layout.to_time_major(value, sequence=False)
            if not state.flags.c_contiguous:
                state = np.ascontiguousarray(state)
            states.append(state.view(np.uint8))
        return states


class _PerThread(threading.local):
    calls: dict | None = None  # (input shape, whether states are given) -> _Prepared


def _no_states(hx) -> bool:
    """Whether ``hx`` gives no state: None, or None for each state (as the cells pass it)."""
    return hx is None or (type(hx) is tuple and all(value is None for value in hx))


def _key(x, hx) -> tuple:
    return x.shape, _no_states(hx)


def run(engine, spec, params, x, hx, batch_first: bool):
    """A prepared call's result for this inference call, or None to take the general route."""
    if engine is not _stack or type(params) is not _stack.KernelArrays or type(x) is not np.ndarray:
        return None
    per_thread = params.__dict__.get("inference_calls")
    if per_thread is None:
        return None
    calls = per_thread.calls
    key = _key(x, hx)
    prepared = calls.get(key) if calls else None
    if prepared is None:
        return None
    result = None
    if prepared.spec is spec and prepared.layout.batch_first == batch_first:
        result = prepared.run(params, x, hx)
    if result is None:
        del calls[key]  # it may hold parameters no longer the layer's; the general route prepares again
    return result


def prepare(engine, spec, params, x, hx, layout, dtype: np.dtype) -> None:
    """Leave a prepared call for later inference calls like this one, which the general route
    has just run without error (``x`` and ``hx`` as the caller gave them)."""
    if (engine is not _stack or type(params) is not _stack.KernelArrays or spec.num_layers != 1
            or type(x) is not np.ndarray):
        return
    steps, batch = layout.steps, layout.batch
    total = steps * batch
    if total * spec.gate_size * spec.output_size * spec.directions >= _stack.PARALLEL_RECURRENCE_WORK:
        return  # a call the threads may share, whose Python costs little beside it
    names = [name for names in spec.kind_names(0).values() for name in names]
    sources = tuple((name, params[name]) for name in dict.fromkeys(names))
    if not all(source.flags.c_contiguous and source.flags.writeable for _, source in sources):
        return  # the kernels would get copies, which later changes to the parameters would miss
    state_count = len(spec.kind.states)
    given = () if _no_states(hx) else ((hx,) if state_count == 1 else tuple(hx))
    if any(type(value) is not np.ndarray for value in given):
        return
    time_major_shapes = spec.state_shapes(batch)
    zero_states = tuple(np.zeros(shape, dtype=dtype).view(np.uint8) for shape in time_major_shapes)
    width = spec.directions * spec.output_size
    schedule = Schedule.full(steps, batch)
    layer_input = np.zeros((total, spec.input_size), dtype=dtype)
    hidden = np.empty((total, width), dtype=dtype)
    call = _stack.layer_call(spec, params, 0, layer_input, zero_states, hidden, {}, schedule, FORWARD)
    if call.pieces:
        return
    places = {name: _Place() for name in ("input", "hidden")}
    initial_marks = tuple(_Place() for _ in range(state_count))
    final_marks = tuple(_Place() for _ in range(state_count))
    call = dataclasses.replace(call, layer_input=places["input"], initial=initial_marks, hidden=places["hidden"])
    kernels = _stack.kernels_of(spec)
    arguments = list(kernels.forward_arguments(call, final_marks))

    def place_of(mark) -> int:
        found = [index for index, argument in enumerate(arguments) if argument is mark]
        if len(found) != 1:
            raise AssertionError(f"{spec.cell}'s forward_arguments must place each of the call's arrays once")
        arguments[found[0]] = None
        return found[0]

    input_place, hidden_place = place_of(places["input"]), place_of(places["hidden"])
    initial_places = tuple(place_of(mark) for mark in initial_marks)
    final_places = tuple((place_of(mark), shape) for mark, shape in zip(final_marks, time_major_shapes, strict=True))
    prepared = _Prepared(
        spec=spec, dtype=dtype, layout=layout, x_shape=x.shape,
        state_shapes=tuple(layout.state_shape(shape[0], shape[2]) for shape in time_major_shapes),
        input_is_rows=not layout.batch_first or batch == 1, rows_shape=(total, spec.input_size),
        hidden_shape=(total, width), output_shape=(steps, batch, width), sources=sources,
        zero_states=zero_states, kernel=kernels.forward_layer, arguments=arguments, input_place=input_place,
        initial_places=initial_places, hidden_place=hidden_place, final_places=final_places,
    )
    per_thread = params.__dict__.setdefault("inference_calls", _PerThread())
    if per_thread.calls is None or len(per_thread.calls) >= MAX_SHAPES:
        per_thread.calls = {}
    per_thread.calls[_key(x, hx)] = prepared
