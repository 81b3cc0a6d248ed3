"""One-layer forwards and backwards, prepared once per parameters, input shape, mode and thread.

At small sizes the Python around a kernel is most of a call. On an AVX2 EPYC the serial
kernel of a (T, B, I, H) = (100, 1, 32, 64) Elman forward took 45-48 µs and the whole
``layer(x)`` 95-100 µs: building the call's arguments (the front end's layout, the
schedule, the ``LayerCall``, the kernel module's argument list) cost as much as the
recurrence, and a training step's backward added about 60 µs more of it. A model run step
by step (``layer(x_t, h)`` with T = 1, or any cell) pays that at every step.

The first forward of a shape (in inference, or keeping what backward needs) takes the
general route, then leaves a prepared call here: the serial kernel's whole argument list,
as the cell's ``forward_arguments`` makes it, with the places of the call's own arrays
(input, initial states, output, final states, and in training the buffers backward reads)
noted. A later call of that shape on the same thread checks what the general route would
(the input's and states' type, dtype and shape, and that every parameter is still the
array it was prepared with), puts its arrays in those places and calls the kernel. In
training it leaves the record the general route would, with the arrays its kernel got; the
first backward of such a record takes the general route and prepares the backward in the
same way (``backward_arguments``), for that thread.

The parameters and gradient buffers are passed as views, so changes made to them in place
are seen; an array put in another's place fails the check. Any call that does not fit
takes the general route, which validates it and raises as before, so this module never
raises for a caller's mistake.

Only calls the serial kernel runs alone are prepared, which keeps each argument list's
buffers small. A prepared call is the preparing thread's: its argument list holds that
thread's scratch buffers (``_scratch``).
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from . import _stack, _stacking
from ._kernels.native import BACKWARD, FORWARD
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
    schedule: Schedule
    x_shape: tuple[int, ...]
    state_shapes: tuple[tuple[int, ...], ...]  # of given states, in the caller's layout
    input_is_rows: bool  # whether a C-contiguous input is already in the kernel's row order
    rows_shape: tuple[int, int]  # the input as the kernel's (T*B, I) rows
    hidden_shape: tuple[int, int]  # the output as the kernel's rows
    output_shape: tuple[int, int, int]  # time-major
    output_caller_shape: tuple[int, ...]  # in the caller's layout
    sources: tuple[tuple[str, np.ndarray], ...]  # every parameter, as the arrays prepared with
    zero_states: tuple[np.ndarray, ...]  # time-major; read by the kernels only, never written
    zero_state_bytes: tuple[np.ndarray, ...]
    kernel: object
    arguments: list
    input_place: int
    initial_places: tuple[int, ...]
    hidden_place: int
    final_places: tuple[tuple[int, tuple[int, int, int]], ...]  # each with its time-major shape
    saved_places: tuple[tuple[str, int, tuple[int, int]], ...]  # training's buffers: name, place, shape
    requires_grad: bool  # whether the call leaves the record backward needs
    backward: dict = dataclasses.field(default_factory=dict)  # _gradient_mode -> its _PreparedBackward, once made

    def run(self, params, x: np.ndarray, hx):
        """``(output, finals, record)`` in the caller's layout, ``record`` the stack's for
        backward in training (else None); or None if the call does not fit."""
        if x.dtype is not self.dtype or x.shape != self.x_shape:
            return None
        for name, source in self.sources:
            if params.get(name) is not source:
                return None
        if _no_states(hx):
            initial, initial_bytes = self.zero_states, self.zero_state_bytes
        else:
            given = self._given_states(hx)
            if given is None:
                return None
            initial, initial_bytes = given
        if not (x.flags.c_contiguous and self.input_is_rows):
            x = np.ascontiguousarray(self.layout.to_time_major(x))
        rows = x.reshape(self.rows_shape)
        arguments = self.arguments.copy()
        arguments[self.input_place] = rows.view(np.uint8)
        for place, state in zip(self.initial_places, initial_bytes, strict=True):
            arguments[place] = state
        hidden = np.empty(self.hidden_shape, dtype=self.dtype)
        arguments[self.hidden_place] = hidden.view(np.uint8)
        finals = []
        for place, shape in self.final_places:
            final = np.empty(shape, dtype=self.dtype)
            arguments[place] = final.view(np.uint8)
            finals.append(final)
        saved = {}
        for name, place, shape in self.saved_places:
            buffer = saved[name] = np.empty(shape, dtype=self.dtype)
            arguments[place] = buffer.view(np.uint8).reshape(-1)
        if get_num_threads() == 1:
            with blas_single_threaded():  # as ``run_kernel`` holds BLAS on one thread
                self.kernel(*arguments, 1, False)
        else:
            self.kernel(*arguments, 1, False)
        record = None
        if self.requires_grad:
            # What the general route's one-layer forward leaves, so that backward is shared,
            # and the arrays' bytes, for a prepared backward.
            layers = [_stacking.LayerRecord(rows, hidden, initial, None, saved)]
            stack = _stacking.StackRecord(self.spec, params, layers, self.schedule)
            kernel_arrays = _RecordArrays(self, arguments[self.input_place], initial_bytes,
                                          arguments[self.hidden_place],
                                          {name: arguments[place] for name, place, _ in self.saved_places})
            record = _stack.Record(self.schedule, stack, self.rows_shape[1], kernel_arrays)
        layout = self.layout
        if layout.batched:
            output = hidden.reshape(self.output_shape)
            if layout.batch_first:
                output = output.transpose(1, 0, 2)
            return output, tuple(finals), record
        return hidden, tuple([final.reshape(final.shape[0], -1) for final in finals]), record

    def _given_states(self, hx):
        """The caller's states, time-major and as the kernel's bytes, or None if they are not
        what was prepared for."""
        values = (hx,) if len(self.state_shapes) == 1 else hx
        if len(self.state_shapes) > 1 and (type(values) not in (tuple, list) or len(values) != len(self.state_shapes)):
            return None
        states, state_bytes = [], []
        for value, shape in zip(values, self.state_shapes, strict=True):
            if type(value) is not np.ndarray or value.dtype is not self.dtype or value.shape != shape:
                return None
            state = self.layout.to_time_major(value, sequence=False)
            if not state.flags.c_contiguous:
                state = np.ascontiguousarray(state)
            states.append(state)
            state_bytes.append(state.view(np.uint8))
        return tuple(states), state_bytes


@dataclasses.dataclass(frozen=True, eq=False)
class _RecordArrays:
    """A prepared forward's record, as its kernel got it."""

    forward: _Prepared
    layer_input: np.ndarray
    initial: tuple[np.ndarray, ...]
    hidden: np.ndarray
    saved: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class _PreparedBackward:
    """The backward of a prepared forward's records, on the thread that prepared it."""

    forward: _Prepared
    thread: int
    grad_sources: tuple[tuple[str, np.ndarray], ...]  # every gradient buffer, as prepared with; () for fresh ones
    fresh_grad_places: tuple[tuple[int, tuple[str, ...]], ...]  # fresh buffers: each pair's place and names
    zero_grads: tuple[np.ndarray, ...]  # bytes of zero final-state gradients; read only
    kernel: object
    arguments: list
    input_place: int
    initial_places: tuple[int, ...]
    hidden_place: int
    saved_places: dict[str, int]
    grad_hidden_place: int
    grad_final_places: tuple[int, ...]
    grad_initial_places: tuple[int, ...]
    grad_input_place: int

    def run(self, record, grad_output, grad_finals, grads):
        """``run_backward``'s ``(grad_x, grad_initials, grads)``, or None if the call does not fit."""
        forward = self.forward
        dtype, layout = forward.dtype, forward.layout
        if (type(grad_output) is not np.ndarray or grad_output.dtype is not dtype
                or grad_output.shape != forward.output_caller_shape):
            return None
        params = record.stack.params
        for name, source in forward.sources:
            if params.get(name) is not source:
                return None
        if grads is None:
            # Fresh zeroed buffers, as the general route makes when it is given none.
            grads = {name: np.zeros(shape, dtype=dtype) for name, shape in forward.spec.parameter_shapes().items()}
        else:
            for name, source in self.grad_sources:
                if grads.get(name) is not source:
                    return None
        if _no_states(grad_finals):
            grad_final_bytes = self.zero_grads
        else:
            given = forward._given_states(grad_finals)
            if given is None:
                return None
            grad_final_bytes = given[1]
        # The kernel consumes the gradient in place, so it always gets a copy.
        grad_hidden = np.array(layout.to_time_major(grad_output), dtype=dtype, order="C", copy=True)
        kept = record.prepared
        arguments = self.arguments.copy()
        arguments[self.input_place] = kept.layer_input
        for place, state in zip(self.initial_places, kept.initial, strict=True):
            arguments[place] = state
        arguments[self.hidden_place] = kept.hidden
        for name, place in self.saved_places.items():
            arguments[place] = kept.saved[name]
        arguments[self.grad_hidden_place] = grad_hidden.reshape(forward.hidden_shape).view(np.uint8)
        for place, grad in zip(self.grad_final_places, grad_final_bytes, strict=True):
            arguments[place] = grad
        grad_initials = []
        for place, (_, shape) in zip(self.grad_initial_places, forward.final_places, strict=True):
            grad = np.empty(shape, dtype=dtype)
            arguments[place] = grad.view(np.uint8)
            grad_initials.append(grad)
        grad_input = np.empty(forward.rows_shape, dtype=dtype)
        arguments[self.grad_input_place] = grad_input.view(np.uint8)
        for place, names in self.fresh_grad_places:
            first = grads[names[0]].view(np.uint8)
            arguments[place] = (first, grads[names[1]].view(np.uint8) if len(names) == 2 else first)
        if get_num_threads() == 1:
            with blas_single_threaded():
                self.kernel(*arguments, 1, False)
        else:
            self.kernel(*arguments, 1, False)
        steps, batch = layout.steps, layout.batch
        grad_x = layout.from_time_major(grad_input.reshape(steps, batch, forward.rows_shape[1]))
        return grad_x, tuple([layout.from_time_major(grad, sequence=False) for grad in grad_initials]), grads


class _PerThread(threading.local):
    calls: dict | None = None  # _key(...) -> _Prepared


def _no_states(hx) -> bool:
    """Whether ``hx`` gives no state: None, or None for each state (as the cells pass it)."""
    return hx is None or (type(hx) is tuple and all(value is None for value in hx))


def _key(x, hx, requires_grad: bool) -> tuple:
    return x.shape, _no_states(hx), requires_grad


def run(engine, spec, params, x, hx, batch_first: bool, requires_grad: bool):
    """A prepared call's ``(output, finals, record, layout)`` for this forward, or None to
    take the general route."""
    if engine is not _stack or type(params) is not _stack.KernelArrays or type(x) is not np.ndarray:
        return None
    per_thread = params.__dict__.get("prepared_calls")
    if per_thread is None:
        return None
    calls = per_thread.calls
    key = _key(x, hx, requires_grad)
    prepared = calls.get(key) if calls else None
    if prepared is None:
        return None
    result = None
    if prepared.spec is spec and prepared.layout.batch_first == batch_first:
        result = prepared.run(params, x, hx)
    if result is None:
        del calls[key]  # it may hold parameters no longer the layer's; the general route prepares again
        return None
    return (*result, prepared.layout)


def prepare(engine, spec, params, x, hx, layout, dtype: np.dtype, requires_grad: bool) -> None:
    """Leave a prepared call for later forwards like this one, which the general route has
    just run without error (``x`` and ``hx`` as the caller gave them)."""
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
    kernels = _stack.kernels_of(spec)
    time_major_shapes = spec.state_shapes(batch)
    zero_states = tuple(np.zeros(shape, dtype=dtype) for shape in time_major_shapes)
    zero_state_bytes = tuple(state.view(np.uint8) for state in zero_states)
    width = spec.directions * spec.output_size
    saved_shapes = {}
    if requires_grad:
        saved_shapes = {name: (total, spec.directions * saved_width)
                        for name, saved_width in kernels.saved_widths(spec).items()}
    schedule = Schedule.full(steps, batch)
    layer_input = np.zeros((total, spec.input_size), dtype=dtype)
    hidden = np.empty((total, width), dtype=dtype)
    saved = {name: np.empty(shape, dtype=dtype) for name, shape in saved_shapes.items()}
    call = _stack.layer_call(spec, params, 0, layer_input, zero_states, hidden, saved, schedule, FORWARD)
    if call.pieces:
        return
    input_mark, hidden_mark = _Place(), _Place()
    initial_marks = tuple(_Place() for _ in range(state_count))
    final_marks = tuple(_Place() for _ in range(state_count))
    saved_marks = {name: _Place() for name in saved_shapes}
    call = dataclasses.replace(call, layer_input=input_mark, initial=initial_marks, hidden=hidden_mark,
                               saved=saved_marks)
    arguments = list(kernels.forward_arguments(call, final_marks))

    def place_of(mark) -> int:
        return _take_place(arguments, mark, f"{spec.cell}'s forward_arguments")

    input_place, hidden_place = place_of(input_mark), place_of(hidden_mark)
    initial_places = tuple(place_of(mark) for mark in initial_marks)
    final_places = tuple((place_of(mark), shape) for mark, shape in zip(final_marks, time_major_shapes, strict=True))
    saved_places = tuple((name, place_of(mark), saved_shapes[name]) for name, mark in saved_marks.items())
    prepared = _Prepared(
        spec=spec, dtype=dtype, layout=layout, schedule=schedule, x_shape=x.shape,
        state_shapes=tuple(layout.state_shape(shape[0], shape[2]) for shape in time_major_shapes),
        input_is_rows=not layout.batch_first or batch == 1, rows_shape=(total, spec.input_size),
        hidden_shape=(total, width), output_shape=(steps, batch, width),
        output_caller_shape=layout.sequence_shape(width), sources=sources,
        zero_states=zero_states, zero_state_bytes=zero_state_bytes, kernel=kernels.forward_layer,
        arguments=arguments, input_place=input_place, initial_places=initial_places, hidden_place=hidden_place,
        final_places=final_places, saved_places=saved_places, requires_grad=requires_grad,
    )
    per_thread = params.__dict__.setdefault("prepared_calls", _PerThread())
    if per_thread.calls is None or len(per_thread.calls) >= MAX_SHAPES:
        per_thread.calls = {}
    per_thread.calls[_key(x, hx, requires_grad)] = prepared


def _take_place(arguments: list, item, maker: str) -> int:
    """The one place of ``item`` in ``arguments`` (by identity), emptied for the calls to fill."""
    found = [index for index, argument in enumerate(arguments) if argument is item]
    if len(found) != 1:
        raise AssertionError(f"{maker} must place each of the call's own arrays once, got {len(found)} places")
    arguments[found[0]] = None
    return found[0]


def _gradient_mode(grads) -> str | None:
    """How a backward gets its gradient buffers: kept ones (a ``KernelArrays``, a layer's
    ``grads``), fresh ones per call (None: ``fastrnn.torch``, the functional API), or
    anything else, which is not prepared."""
    if grads is None:
        return "fresh"
    return "kept" if type(grads) is _stack.KernelArrays else None


def run_backward(saved, grad_output, grad_finals, grads):
    """A prepared backward's ``(grad_x, grad_initials, grads)`` for ``saved`` (the front
    end's record of a forward), or None to take the general route."""
    record = saved.state
    if type(record) is not _stack.Record or record.prepared is None:
        return None
    backward = record.prepared.forward.backward.get(_gradient_mode(grads))
    if backward is None or backward.thread != threading.get_ident():
        return None
    return backward.run(record, grad_output, grad_finals, grads)


def prepare_backward(saved, grads) -> None:
    """Leave a prepared backward for the records of ``saved``'s prepared forward, whose
    backward the general route has just run without error."""
    record = saved.state
    mode = _gradient_mode(grads)
    if type(record) is not _stack.Record or record.prepared is None or mode is None:
        return
    forward = record.prepared.forward
    spec, dtype = forward.spec, forward.dtype
    grad_sources = ()
    if grads is None:  # fresh buffers at every call: the template gets stand-ins, whose places are noted
        grads = {name: np.zeros(shape, dtype=dtype) for name, shape in spec.parameter_shapes().items()}
    else:
        grad_sources = tuple((name, grads.get(name)) for name, _ in forward.sources)
        if not all(type(source) is np.ndarray and source.flags.c_contiguous and source.flags.writeable
                   for _, source in grad_sources):
            return
    grad_pairs = _stack.gradient_pairs(spec, grads, 0, dtype)
    layer = record.stack.layers[0]
    call = _stack.layer_call(spec, record.stack.params, 0, layer.layer_input, layer.initial, layer.hidden,
                             layer.saved, forward.schedule, BACKWARD)
    grad_hidden = _stack.as_bytes(np.empty(forward.hidden_shape, dtype=dtype))
    zero_grads = tuple(_stack.as_bytes(np.zeros(shape, dtype=dtype)) for _, shape in forward.final_places)
    grad_initials = tuple(_stack.as_bytes(np.empty(shape, dtype=dtype)) for _, shape in forward.final_places)
    grad_input = _stack.as_bytes(np.empty(forward.rows_shape, dtype=dtype))
    kernels = _stack.kernels_of(spec)
    arguments = list(kernels.backward_arguments(
        call, grad_hidden, zero_grads, grad_initials, grad_pairs, grad_input,
    ))

    def place_of(array) -> int:
        return _take_place(arguments, array, f"{spec.cell}'s backward_arguments")

    fresh_grad_places = ()
    if not grad_sources:
        fresh_grad_places = tuple((place_of(grad_pairs[kind]), names) for kind, names in spec.kind_names(0).items())
    forward.backward[mode] = _PreparedBackward(
        forward=forward, thread=threading.get_ident(), grad_sources=grad_sources,
        fresh_grad_places=fresh_grad_places, zero_grads=zero_grads,
        kernel=kernels.backward_layer, arguments=arguments, input_place=place_of(call.layer_input),
        initial_places=tuple(place_of(state) for state in call.initial), hidden_place=place_of(call.hidden),
        saved_places={name: place_of(buffer) for name, buffer in call.saved.items()},
        grad_hidden_place=place_of(grad_hidden), grad_final_places=tuple(place_of(grad) for grad in zero_grads),
        grad_initial_places=tuple(place_of(grad) for grad in grad_initials), grad_input_place=place_of(grad_input),
    )
