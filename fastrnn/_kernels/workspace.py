"""Scratch memory for the step loops of the exported kernels, without reference counts.

numba counts the references to every array it allocates, and each view of one
(``buffer[a:b]``) adds a reference and drops it again: two atomic instructions, each of
which also waits for the core's pending stores. The LSTM and GRU steps take several views
per batch row, and in an LSTM forward at (T, B, I, H) = (256, 16, 64, 64) those atomics
alone took about a tenth of the samples. Views of memory reached through a pointer
(``carray``) have no count. So a kernel allocates its scratch as usual, works on an
``uncounted`` alias of it, and calls ``keep_alive`` on the allocation after its last use
of the alias: numba frees an array after the last line that names it.
"""

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._config import jit_helper


@intrinsic
def uncounted(typingctx, array):
    """``array`` without its reference count: the alias and its views hold no reference,
    so the caller keeps ``array`` alive (``keep_alive``) for as long as they are used."""
    signature = array(array)

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        alias = context.make_array(signature.return_type)(context, builder)
        for name in ("data", "shape", "strides", "itemsize", "nitems"):
            setattr(alias, name, getattr(source, name))
        alias.meminfo = cgutils.get_null_value(alias.meminfo.type)
        alias.parent = cgutils.get_null_value(alias.parent.type)
        return alias._getvalue()

    return signature, codegen


@intrinsic
def keep_alive(typingctx, array):
    """Does nothing, but names ``array``, so numba keeps it allocated up to this point."""
    signature = types.none(array)

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return signature, codegen


@jit_helper
def split(free, count):
    """The first ``count`` values of ``free`` and the rest: how a kernel carves its workspace."""
    return free[:count], free[count:]
