"""Kernels compiled once per dtype as C functions, which other kernels call by symbol.

numba compiles a kernel together with everything it calls, so a large helper reached
from several kernels (serial and threaded builds, forward and backward, two dtypes) is
optimised and turned into machine code once per kernel. Compiled as a C function under a
symbol of its own, it is compiled once per dtype, and its callers declare it as an
external function, as they do the BLAS routines. Compiling every Elman kernel took
18-22 s with the step kernels compiled into their callers.

Arrays cross as data pointers: the caller passes ``array.ctypes.data`` and the sizes the
callee needs to view the memory again with ``carray``. An exported kernel opens those views
in its own first lines instead of handing them to a helper: numba optimises and emits
machine code for every function it compiles before linking it into its callers, so a
wrapper around the kernel's body doubled that work for the body and all it calls (the first
forward and backward of an Elman layer, from an empty cache, took about 20% longer).
"""

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import llvmlite.binding as llvm_binding
import numpy as np
from numba import cfunc, types
from numba.extending import overload

from .._config import C_FUNCTION_OPTIONS

FLOAT_TYPES = {"float32": types.float32, "float64": types.float64}

# The kinds of argument an exported kernel takes: a float array (passed as its address),
# a 64-bit integer (a size, an offset or a flag), or an array of them (passed as its address).
ARRAY = "array"
INDEX = "index"
INDICES = "indices"

# What a layer call runs: a forward pass, or a backward pass (which also packs weights and
# takes per-step products). An export is compiled for the stages that call it, so the
# first inference call never compiles a backward kernel.
FORWARD = "forward"
BACKWARD = "backward"
STAGES = (FORWARD, BACKWARD)


def _argument_type(kind: str, scalar):
    if kind == ARRAY:
        return types.CPointer(scalar)
    if kind == INDEX:
        return types.int64
    if kind == INDICES:
        return types.CPointer(types.int64)
    raise ValueError(f"argument kinds are {ARRAY!r}, {INDEX!r} and {INDICES!r}, got {kind!r}")


@dataclass
class _Export:
    name: str
    function: Callable
    argument_types: Callable
    stages: tuple[str, ...]
    compiled: dict = field(default_factory=dict)  # dtype name -> cfunc, once compiled


_exports: list[_Export] = []  # in declaration order: an export's callees are declared before it
# (dtype, stage) pairs whose declared exports are all compiled; a new declaration clears it
_ready: set[tuple[np.dtype, str | None]] = set()
_compile_lock = threading.RLock()


def export(name: str, function: Callable, *, stages: tuple[str, ...] = STAGES, **arguments: str) -> Callable:
    """Declare ``function`` as the C function ``fastrnn_<name>_<dtype>`` of each float dtype.

    The C signature is given once, by name: ``arguments`` maps each of ``function``'s
    parameters, in order, to ``ARRAY`` or ``INDEX``; a mismatch with the function's own
    parameters raises here, where it is declared. ``stages`` says which layer passes call
    it. Nothing is compiled until ``ensure_compiled`` asks for a dtype and a stage.
    Returns what kernels call instead: ``call(like, *arguments)``, ``like`` any array of
    the dtype wanted (its dtype picks the build at compile time) and arrays given as
    addresses (``array.ctypes.data``).
    """
    declared = list(arguments)
    parameters = list(inspect.signature(function).parameters)
    if declared != parameters:
        raise TypeError(f"export {name!r}: declared arguments {declared} do not match {function.__name__}"
                        f"'s parameters {parameters}")
    kinds = tuple(arguments.values())
    unknown = set(stages) - set(STAGES)
    if not stages or unknown:
        raise ValueError(f"export {name!r}: stages are some of {STAGES}, got {stages}")

    def argument_types(scalar):
        return tuple(_argument_type(kind, scalar) for kind in kinds)

    _exports.append(_Export(name, function, argument_types, tuple(stages)))
    _ready.clear()
    externals = {}
    for dtype_name in FLOAT_TYPES:
        as_called = [types.int64 if kind == INDEX else types.voidptr for kind in kinds]
        externals[dtype_name] = types.ExternalFunction(_symbol(name, dtype_name), types.void(*as_called))

    def call(like, *arguments):
        """Stands for the compiled implementation below inside kernels."""

    @overload(call)
    def _call(like, *arguments):
        external = externals[str(like.dtype)] if isinstance(like, types.Array) else None
        if external is None:
            raise TypeError(f"{name}: the first argument must be an array of float32 or float64, got {like}")

        def implementation(like, *arguments):
            external(*arguments)

        return implementation

    return call


def _symbol(name: str, dtype_name: str) -> str:
    return f"fastrnn_{name}_{dtype_name}"


def ensure_compiled(dtype, stage: str | None = None) -> None:
    """Compile (or load from numba's cache) the declared C functions of ``stage`` for ``dtype``.

    Kernels that call them link to their symbols when they are compiled or loaded, so this
    runs before any of them for that dtype. A process that only ever uses float32 never
    compiles the float64 builds, one that only runs inference never compiles the backward
    ones, and a cell whose kernel module is never imported declares nothing. ``stage``
    None compiles every stage.
    """
    # Called on every layer call: a set lookup (``dtype.name`` alone takes microseconds).
    ready_key = (dtype, stage)
    if ready_key in _ready:
        return
    dtype = np.dtype(dtype)
    dtype_name = dtype.name
    with _compile_lock:
        scalar = FLOAT_TYPES[dtype_name]
        for item in _exports:
            if stage is not None and stage not in item.stages:
                continue
            if dtype_name not in item.compiled:
                signature = types.void(*item.argument_types(scalar))
                # The package's options: compiled without its fastmath flags, the activations'
                # polynomials ran as separate multiplies and adds, not multiply-adds.
                compiled = cfunc(signature, **C_FUNCTION_OPTIONS)(item.function)
                llvm_binding.add_symbol(_symbol(item.name, dtype_name), compiled.address)
                item.compiled[dtype_name] = compiled
        _ready.add(ready_key)
