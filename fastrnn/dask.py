"""Run a fastrnn layer over a Dask array: one inference task per chunk of the batch.

Install with ``pip install "fastrnn[dask]"``; ``import fastrnn`` never imports this module.

Sequences of a batch never interact, so a batch split into chunks along its batch axis
runs as independent tasks, each the layer's own inference path (eval mode,
``requires_grad=False``) on its chunk of ``x``, ``hx`` and ``lengths``. The time axis must
be one chunk: a recurrence cannot start a chunk of steps before the previous one ended.

The module goes into the task graph once, as one key that every chunk's task depends on.
The distributed scheduler moves a dependency to a worker the first time a task there
needs it and keeps it in that worker's memory for the rest of the computation, so each
worker receives (and unpickles) the module once, however many chunks it runs. Being a
key of the graph, the module is also rebuilt like any other result if the worker holding
it dies.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

try:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError('fastrnn.dask needs dask: pip install "fastrnn[dask]"') from error

try:
    from distributed import WorkerPlugin
except ImportError:  # pragma: no cover - forward runs on any Dask scheduler; only the plugin needs distributed
    WorkerPlugin = object

from . import _rebuild
from ._parallel import set_num_threads

__all__ = ["FastrnnThreads", "forward"]

_LAYER_KINDS = ("RNN", "LSTM", "GRU")


class FastrnnThreads(WorkerPlugin):
    """A ``distributed`` worker plugin: fastrnn, and the OpenBLAS it calls, use ``n`` threads on each worker.

    ``client.register_plugin(FastrnnThreads(1))`` sets every current worker, and every
    worker that joins later (a restarted one included), to run ``n`` threads per fastrnn
    call. numba otherwise starts as many threads as the machine has cores in every worker
    process, so several workers on one machine would each use all of its cores. Give each
    worker ``n = cores per worker / threads_per_worker`` to keep the machine's cores busy
    without oversubscribing them.
    """

    name = "fastrnn-threads"  # registering another FastrnnThreads replaces this one
    idempotent = False

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"number of threads must be a positive int, got {n!r}")
        self.n = n

    def setup(self, worker: Any = None) -> None:
        set_worker_threads(self.n)


def set_worker_threads(n: int) -> None:
    """``fastrnn.set_num_threads(n)``, and OpenBLAS held to ``n`` threads, in this process."""
    from ._kernels.blas import openblas

    set_num_threads(n)
    # The serial kernels call OpenBLAS for their whole-sequence products; with its
    # default of one thread per core it would spread each of them over the machine.
    openblas.scipy_openblas_set_num_threads64_(n)


def _forward_chunk(module: Any, x: np.ndarray, lengths: np.ndarray | None, *states: np.ndarray) -> tuple:
    """One chunk's ``(output, *final_states)``, by the layer's inference path."""
    hx = None if not states else states[0] if len(states) == 1 else tuple(states)
    output, finals = module(x, hx, requires_grad=False, lengths=lengths)
    return (output, *finals) if isinstance(finals, tuple) else (output, finals)


def _inference_copy(module: Any, batch_first: bool) -> Any:
    """The module as the tasks run it: a copy in eval mode laid out as this call's arrays,
    so that the caller's module (its mode, its parameters changed later) is left alone."""
    args = _rebuild.constructor_args(module)
    args["batch_first"] = batch_first
    copy = _rebuild.build(type(module), args, _rebuild.dtype_name(module))
    copy.load_state_dict(module.state_dict())
    return copy.eval()


def _as_dask_array(name: str, value: Any) -> da.Array:
    if isinstance(value, da.Array):
        return value
    try:
        return da.from_array(np.asarray(value), chunks=-1)
    except Exception as error:  # array-likes fail in many ways; report them all alike
        raise TypeError(f"{name} must be a Dask or NumPy array, got {type(value).__name__}") from error


def _check_known_chunks(name: str, array: da.Array) -> None:
    if any(np.isnan(size) for sizes in array.chunks for size in sizes):
        raise ValueError(f"{name} has chunks of unknown size; call {name}.compute_chunk_sizes() first")


def _state_arrays(module: Any, hx: Any, batch: int, batch_chunks: tuple[int, ...]) -> list[da.Array]:
    """Each initial state as a Dask array chunked along its batch axis (1) like ``x``."""
    spec = module.spec
    if hx is None:
        return []
    names = ("h_0", "c_0") if len(spec.state_sizes) == 2 else ("hx",)
    if len(names) == 2:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"expected hx as a tuple (h_0, c_0) of arrays for an LSTM, got {type(hx).__name__}")
        values = list(hx)
    else:
        values = [hx]
    stacked = spec.num_layers * spec.directions
    arrays = []
    for name, value, width in zip(names, values, spec.state_sizes, strict=True):
        if value is None:
            raise TypeError(f"{name} is None: pass every initial state, or hx=None for zeros")
        array = _as_dask_array(name, value)
        _check_known_chunks(name, array)
        if array.shape != (stacked, batch, width):
            raise ValueError(f"expected {name} of shape {(stacked, batch, width)} (num_layers * directions, B, "
                             f"{'proj_size or hidden_size' if name != 'c_0' else 'hidden_size'}), got {array.shape}")
        if array.dtype != module.dtype:
            raise TypeError(f"{name} has dtype {array.dtype} but the layer's dtype is {module.dtype}")
        arrays.append(array.rechunk((stacked, batch_chunks, width)))
    return arrays


def _lengths_array(lengths: Any, steps: int, batch: int, batch_chunks: tuple[int, ...]) -> da.Array | None:
    if lengths is None:
        return None
    if not isinstance(lengths, da.Array):
        values = np.asarray(lengths)
        if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"lengths must be a 1-D array of integers, got dtype {values.dtype}")
        if values.shape != (batch,):
            raise ValueError(f"lengths must hold one value per sequence ({batch}), got shape {values.shape}")
        if values.size and (values.min() < 0 or values.max() > steps):
            raise ValueError(f"lengths must lie in [0, {steps}] (the padded length T), got "
                             f"{values[(values < 0) | (values > steps)][0]}")
        return da.from_array(values, chunks=(batch_chunks,))
    _check_known_chunks("lengths", lengths)
    if lengths.dtype == np.bool_ or not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"lengths must be a 1-D array of integers, got dtype {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must hold one value per sequence ({batch}), got shape {lengths.shape}")
    # Its values are checked by the layer, chunk by chunk, when the tasks run.
    return lengths.rechunk((batch_chunks,))


def forward(
    module: Any, x: Any, hx: Any = None, *, lengths: Any = None, batch_first: bool = False
) -> tuple[da.Array, da.Array | tuple[da.Array, da.Array]]:
    """``output, h_n = forward(layer, x, hx)`` (LSTM: ``output, (h_n, c_n)``) as lazy Dask arrays.

    ``module`` is a fastrnn ``RNN``, ``LSTM`` or ``GRU`` (or a ``fastrnn.reference`` twin).
    ``x`` is a Dask array of shape (T, B, I), or (B, T, I) with ``batch_first=True``,
    chunked along its batch axis only; each chunk becomes one task. A feature axis in
    several chunks is joined into one; a time axis in several chunks raises ``ValueError``,
    since each task needs whole sequences. ``batch_first`` describes ``x`` and ``output``
    here, whatever the module's own ``batch_first``.

    ``hx`` (LSTM: the pair ``(h_0, c_0)``) and ``lengths`` may be Dask or NumPy arrays; they
    are chunked along their batch axis (axis 1 of each state, the only axis of ``lengths``)
    to match ``x``. The tasks run a copy of the module taken now, in eval mode: dropout is
    off, nothing is kept for backward, and the module itself is not changed.

    The results share their tasks: compute them together (``dask.compute(output, h_n)``
    or ``client.compute([...])``) so each chunk runs once.
    """
    kind = _rebuild.kind_of(module).removeprefix("reference.")
    if kind not in _LAYER_KINDS:
        raise TypeError(f"fastrnn.dask.forward takes a layer (RNN, LSTM or GRU), got {type(module).__name__}: "
                        "one step of a cell over a batch is a layer's forward with T = 1")
    if isinstance(batch_first, np.bool_):
        batch_first = bool(batch_first)
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first must be a bool, got {batch_first!r}")
    x = _as_dask_array("x", x)
    layout = "(B, T, I)" if batch_first else "(T, B, I)"
    if x.ndim != 3:
        raise ValueError(f"expected x of 3 dimensions {layout} with I = {module.input_size}, got {x.ndim} "
                         f"dimensions with shape {x.shape} (unbatched input has no batch axis to split)")
    _check_known_chunks("x", x)
    if x.shape[2] != module.input_size:
        raise ValueError(f"expected x of shape {layout} with I = {module.input_size}, got shape {x.shape}")
    if x.dtype != module.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the layer's dtype is {module.dtype}; convert it with "
                        f".astype(np.{module.dtype})")
    batch_axis, time_axis = (0, 1) if batch_first else (1, 0)
    steps, batch = x.shape[time_axis], x.shape[batch_axis]
    if x.numblocks[time_axis] != 1:
        raise ValueError(
            f"x is chunked along its time axis (axis {time_axis}, chunks {x.chunks[time_axis]}); each task runs "
            f"whole sequences, so chunk it along the batch axis (axis {batch_axis}) only, e.g. "
            f"x.rechunk({{{time_axis}: -1}})" + ("" if batch_first else ", or pass batch_first=True for (B, T, I)")
        )
    if x.numblocks[2] != 1:
        x = x.rechunk({2: -1})
    batch_chunks = x.chunks[batch_axis]
    states = _state_arrays(module, hx, batch, batch_chunks)
    lengths_array = _lengths_array(lengths, steps, batch, batch_chunks)

    shipped = _inference_copy(module, batch_first)
    cls = type(module)
    # Named by content, so that several calls with the same weights share one key.
    module_key = "fastrnn-module-" + tokenize(
        f"{cls.__module__}.{cls.__qualname__}", _rebuild.constructor_args(shipped), _rebuild.dtype_name(shipped),
        shipped.state_dict(),
    )
    inputs = [x, *states] + ([lengths_array] if lengths_array is not None else [])
    run_name = "fastrnn-forward-" + tokenize(module_key, batch_first, *(array.name for array in inputs))

    def block_key(array: da.Array, index: int, axis: int) -> tuple:
        return (array.name, *(index if position == axis else 0 for position in range(array.ndim)))

    tasks: dict[Any, Any] = {module_key: shipped}
    for index in range(len(batch_chunks)):
        lengths_key = None if lengths_array is None else block_key(lengths_array, index, 0)
        tasks[(run_name, index)] = (_forward_chunk, module_key, block_key(x, index, batch_axis), lengths_key,
                                    *(block_key(state, index, 1) for state in states))
    runs = HighLevelGraph.from_collections(run_name, tasks, dependencies=inputs)

    def result(position: int, name: str, shape: tuple[int, ...], axis: int) -> da.Array:
        """The ``position``-th result of every chunk's task, as one array chunked along ``axis``."""
        out_name = f"{name}-{run_name}"
        pieces = {
            (out_name, *(index if dim == axis else 0 for dim in range(3))): (operator.getitem, (run_name, index),
                                                                               position)
            for index in range(len(batch_chunks))
        }
        graph = HighLevelGraph({**runs.layers, out_name: pieces}, {**runs.dependencies, out_name: {run_name}})
        chunks = tuple(batch_chunks if dim == axis else (size,) for dim, size in enumerate(shape))
        return da.Array(graph, out_name, chunks, meta=np.empty((0, 0, 0), dtype=module.dtype))

    spec = module.spec
    width = spec.directions * spec.output_size
    output_shape = (batch, steps, width) if batch_first else (steps, batch, width)
    output = result(0, "output", output_shape, batch_axis)
    stacked = spec.num_layers * spec.directions
    finals = tuple(
        result(1 + position, f"{state}_n", (stacked, batch, size), 1)
        for position, (state, size) in enumerate(zip(spec.kind.states, spec.state_sizes, strict=True))
    )
    return output, finals[0] if len(finals) == 1 else finals
