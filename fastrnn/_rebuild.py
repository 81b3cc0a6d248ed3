"""What a layer or cell is made of, and how to make it again: its kind, constructor arguments and dtype.

Files (``fastrnn.save``/``load``), pickling and the Dask helpers all describe a module by
these three and rebuild it through its own constructor, so they never depend on the
attributes a module happens to keep inside.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ._stack import KernelArrays

# Each kind's constructor arguments besides ``dtype`` and ``seed``, in the constructor's order.
_LAYER_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
CONSTRUCTOR_ARGS: dict[str, tuple[str, ...]] = {
    "RNN": ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first", "dropout",
            "bidirectional"),
    "LSTM": (*_LAYER_ARGS, "proj_size"),
    "GRU": _LAYER_ARGS,
    "RNNCell": ("input_size", "hidden_size", "bias", "nonlinearity"),
    "LSTMCell": ("input_size", "hidden_size", "bias"),
    "GRUCell": ("input_size", "hidden_size", "bias"),
}
# The reference twins are the same kinds run by the NumPy engine.
KINDS = (*CONSTRUCTOR_ARGS, *(f"reference.{name}" for name in CONSTRUCTOR_ARGS))

PICKLE_VERSION = 1


def _classes() -> dict[str, type]:
    # Imported here: the layer and cell modules import this one for pickling.
    from . import cells, layers, reference

    found = {name: getattr(layers, name, None) or getattr(cells, name) for name in CONSTRUCTOR_ARGS}
    found.update({f"reference.{name}": getattr(reference, name) for name in CONSTRUCTOR_ARGS})
    return found


def kind_of(module: Any) -> str:
    """The kind of a fastrnn layer or cell (``"LSTM"``, ``"reference.GRUCell"``...), subclasses included."""
    classes = _classes()
    by_class = {cls: name for name, cls in classes.items()}
    for cls in type(module).__mro__:
        if cls in by_class:
            return by_class[cls]
    raise TypeError(
        f"expected a fastrnn layer or cell ({', '.join(CONSTRUCTOR_ARGS)}, or their fastrnn.reference twins), "
        f"got {type(module).__name__}"
    )


def constructor_args(module: Any) -> dict[str, Any]:
    """The arguments that build ``module`` again (``dtype`` and ``seed`` aside), as plain Python values."""
    kind = kind_of(module).removeprefix("reference.")
    args = {}
    for name in CONSTRUCTOR_ARGS[kind]:
        value = getattr(module, name)
        # Plain bool/int/float/str, so the arguments go into JSON as they are.
        args[name] = value.item() if isinstance(value, np.generic) else value
    return args


def dtype_name(module: Any) -> str:
    return np.dtype(module.dtype).name


def build(cls: type, args: dict[str, Any], dtype: str) -> Any:
    """A new ``cls`` from its constructor arguments.

    Its parameters are freshly initialised, to be overwritten by the caller. The warning
    that dropout does nothing on one layer was given when the module was first built, so
    it is not repeated.
    """
    if args.get("dropout", 0) and args.get("num_layers", 1) == 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return cls(**args, dtype=dtype)
    return cls(**args, dtype=dtype)


def build_kind(kind: str, args: dict[str, Any], dtype: str) -> Any:
    return build(_classes()[kind], args, dtype)


def pickle_state(module: Any) -> dict[str, Any]:
    """What a pickled layer or cell carries: parameters, hyper-parameters, mode and generator.

    Left out, as torch leaves them out: gradients (a copy starts from zero), what a forward
    kept for backward, and the per-thread buffers of the kernels (which belong to threads, not
    to the module).
    """
    return {
        "version": PICKLE_VERSION,
        "args": constructor_args(module),
        "dtype": dtype_name(module),
        "parameters": module.state_dict(),
        "training": module.training,
        "generator": module.generator,
    }


def restore_pickle_state(module: Any, state: dict[str, Any]) -> None:
    """Make the blank ``module`` that unpickling created into the one ``pickle_state`` described."""
    if not isinstance(state, dict) or state.get("version") != PICKLE_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"cannot unpickle this {type(module).__name__}: it was pickled in format {found!r}, "
            f"and this fastrnn reads format {PICKLE_VERSION}"
        )
    fresh = build(type(module), state["args"], state["dtype"])
    module.__dict__.update(fresh.__dict__)
    expected = module.state_dict()
    parameters = state["parameters"]
    for name, array in parameters.items():
        if name not in expected or array.shape != expected[name].shape or array.dtype != expected[name].dtype:
            raise ValueError(f"cannot unpickle this {type(module).__name__}: its parameter {name!r} does not fit "
                             f"its constructor arguments {state['args']}")
    if parameters.keys() != expected.keys():
        raise ValueError(f"cannot unpickle this {type(module).__name__}: parameters "
                         f"{sorted(expected.keys() - parameters.keys())} are missing")
    # The unpickled arrays belong to this module alone, so they are kept rather than copied.
    module._params = KernelArrays((name, parameters[name]) for name in expected)
    module.training = state["training"]
    module.generator = state["generator"]
