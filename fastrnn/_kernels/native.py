"""Kernels compiled once per dtype as C functions, which other kernels call by symbol.

numba compiles a kernel together with everything it calls, so a large helper reached
from several kernels (serial and threaded builds, forward and backward, two dtypes) is
optimised and turned into machine code once per kernel. Compiled as a C function under a
symbol of its own, it is compiled once per dtype, and its callers declare it as an
external function, as they do the BLAS routines. Compiling every Elman kernel took
18-22 s with the step kernels compiled into their callers.

Arrays cross as data pointers: the caller passes ``array.ctypes.data`` and the sizes the
callee needs to view the memory again with ``carray``.
"""

import inspect
from collections.abc import Callable

import llvmlite.binding as llvm_binding
from numba import cfunc, types
from numba.extending import overload

FLOAT_TYPES = {"float32": types.float32, "float64": types.float64}

_compiled = []  # the compiled functions stay alive: their symbols hold their addresses


# The kinds of argument an exported kernel takes: a float array (passed as its address)
# or a 64-bit integer (a size, an offset or a flag).
ARRAY = "array"
INDEX = "index"


def _argument_type(kind: str, scalar):
    if kind == ARRAY:
        return types.CPointer(scalar)
    if kind == INDEX:
        return types.int64
    raise ValueError(f"argument kinds are {ARRAY!r} and {INDEX!r}, got {kind!r}")


def export(name: str, function: Callable, argument_types: Callable | None = None, **arguments: str) -> Callable:
    """Compile ``function`` for each float dtype and register it as ``fastrnn_<name>_<dtype>``.

    The C signature is given once, by name: ``arguments`` maps each of ``function``'s
    parameters, in order, to ``ARRAY`` or ``INDEX``; a mismatch with the function's own
    parameters raises here, where it is declared. (``argument_types(scalar)``, a tuple of
    numba types, is the older positional form.) Returns what kernels call instead:
    ``call(float_size, *arguments)``, arrays given as addresses (``array.ctypes.data``),
    which runs the build for ``float_size``-byte floats.
    """
    if arguments:
        declared = list(arguments)
        parameters = list(inspect.signature(function).parameters)
        if declared != parameters:
            raise TypeError(f"export {name!r}: declared arguments {declared} do not match {function.__name__}"
                            f"'s parameters {parameters}")

        def argument_types(scalar):
            return tuple(_argument_type(kind, scalar) for kind in arguments.values())

    externals = {}
    for dtype_name, scalar in FLOAT_TYPES.items():
        signature = argument_types(scalar)
        compiled = cfunc(types.void(*signature), cache=True, error_model="numpy")(function)
        symbol = f"fastrnn_{name}_{dtype_name}"
        llvm_binding.add_symbol(symbol, compiled.address)
        _compiled.append(compiled)
        as_called = [types.voidptr if isinstance(argument, types.CPointer) else argument for argument in signature]
        externals[dtype_name] = types.ExternalFunction(symbol, types.void(*as_called))
    single, double = externals["float32"], externals["float64"]

    def call(float_size, *arguments):
        """Stands for the compiled implementation below inside kernels."""

    @overload(call)
    def _call(float_size, *arguments):
        def implementation(float_size, *arguments):
            if float_size == 4:
                single(*arguments)
            else:
                double(*arguments)

        return implementation

    return call
