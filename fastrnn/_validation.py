"""Up-front checks for the public API: every message says what was expected and what was got."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from ._cells import CELL_KINDS
from ._spec import NONLINEARITIES, StackSpec

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} of type {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"dropout must be a number in [0, 1], got {value!r} of type {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"dropout must be a number in [0, 1], got {value}")
    return float(value)


def check_nonlinearity(value: Any) -> str:
    if value not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {sorted(NONLINEARITIES)}, got {value!r}")
    return NONLINEARITIES[value]


def check_dtype(value: Any) -> np.dtype:
    try:
        dtype = np.dtype(value)
    except TypeError as error:
        raise TypeError(f"dtype must be float32 or float64, got {value!r}") from error
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def check_lengths(value: Any, layout_batched: bool, steps: int, batch: int) -> np.ndarray | None:
    """``lengths`` as a fresh int64 array of ``batch`` values in [0, ``steps``], or None.

    The caller's array is copied, so nothing done later can change it.
    """
    if value is None:
        return None
    if not layout_batched:
        raise ValueError("lengths needs batched input (T, B, I) or (B, T, I); got unbatched input, which is one "
                         "sequence of length T: pass no lengths")
    try:
        array = np.array(value)
    except Exception as error:  # array-likes fail in many ways; report them all alike
        raise TypeError(f"lengths must be a 1-D array of integers, got {type(value).__name__}") from error
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"lengths must be a 1-D array of integers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"lengths must be 1-D with one value per sequence ({batch}), got shape {array.shape}")
    if array.shape[0] != batch:
        raise ValueError(f"lengths must have one value per sequence of the batch ({batch}), got {array.shape[0]}")
    if array.size and (array.min() < 0 or array.max() > steps):
        bad = array[(array < 0) | (array > steps)][0]
        raise ValueError(f"lengths must lie in [0, {steps}] (the padded length T), got {bad}")
    return array.astype(np.int64)


def as_array(name: str, value: Any, dtype: np.dtype | None, owner: str = "layer") -> np.ndarray:
    """View ``value`` as an ndarray without copying or casting; reject what does not fit.

    ``dtype=None`` accepts either float dtype (the functional API takes it from ``x``).
    ``owner`` names what has ``dtype`` in the message (the layer, the cell).
    """
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except Exception as error:  # array-likes fail in many ways; report them all alike
            raise TypeError(
                f"{name} must be an array of float32 or float64, got {type(value).__name__} "
                f"that cannot be converted: {error}"
            ) from error
    if array.dtype not in FLOAT_DTYPES:
        wanted = dtype if dtype is not None else "float32 or float64"
        raise TypeError(f"{name} must be an array of dtype {wanted}, got dtype {array.dtype}")
    if dtype is not None and array.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {array.dtype} but the {owner}'s dtype is {dtype}; "
            f"convert it with .astype(np.{dtype}) or build the {owner} with dtype=np.{array.dtype}"
        )
    return array


def check_proj_size(value: Any, hidden_size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"proj_size must be an int, got {value!r} of type {type(value).__name__}")
    if value < 0:
        raise ValueError(f"proj_size should be a positive integer or zero to disable projections, got {value}")
    if value >= hidden_size:
        raise ValueError(f"proj_size has to be smaller than hidden_size ({hidden_size}), got {value}")
    return int(value)


def spec_from_params(params: Mapping[str, Any], cell: str) -> tuple[StackSpec, dict[str, np.ndarray]]:
    """Infer the stack's shape from torch-style parameter names and check it is complete."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of parameter names to arrays, got {type(params).__name__}")
    if "weight_ih_l0" not in params or "weight_hh_l0" not in params:
        raise ValueError(
            f"params must contain at least 'weight_ih_l0' and 'weight_hh_l0', got keys {sorted(params)}"
        )
    num_layers = 0
    while f"weight_ih_l{num_layers}" in params:
        num_layers += 1
    first_ih = np.shape(params["weight_ih_l0"])
    first_hh = np.shape(params["weight_hh_l0"])
    if len(first_ih) != 2 or len(first_hh) != 2:
        raise ValueError(
            f"weight_ih_l0 and weight_hh_l0 must be 2-D, got shapes {first_ih} and {first_hh}"
        )
    gates = CELL_KINDS[cell].gates
    if first_ih[0] % gates or first_ih[0] == 0:
        raise ValueError(
            f"weight_ih_l0 must have {gates} x hidden_size rows for this cell, got shape {first_ih}"
        )
    proj_size = 0
    if "weight_hr_l0" in params:
        if not CELL_KINDS[cell].takes_proj_size:
            raise ValueError(f"params hold 'weight_hr_l0', a projection, which this cell ({cell}) does not take")
        proj_size = int(np.shape(params["weight_hr_l0"])[0]) if np.ndim(params["weight_hr_l0"]) == 2 else -1
        if proj_size <= 0:
            raise ValueError(f"weight_hr_l0 must be 2-D (proj_size, hidden_size), got shape "
                             f"{np.shape(params['weight_hr_l0'])}")
    spec = _stack_spec(cell, int(first_ih[1]), int(first_ih[0]) // gates, num_layers, "bias_ih_l0" in params,
                       "weight_ih_l0_reverse" in params, proj_size)
    return spec, check_state_dict(spec, params, None)


@lru_cache(maxsize=256)
def _stack_spec(cell: str, input_size: int, hidden_size: int, num_layers: int, bias: bool, bidirectional: bool,
                proj_size: int) -> StackSpec:
    """One spec per shape, so that its derived shapes and names are worked out once: a
    functional call with the same parameters again (as ``fastrnn.torch`` makes on every
    forward) took about 50 us to build them anew at (I, H) = (32, 64)."""
    return StackSpec(cell=cell, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, bias=bias,
                     bidirectional=bidirectional, proj_size=proj_size)


def check_state_dict(
    expected: StackSpec | Mapping[str, tuple[int, ...]], params: Mapping[str, Any], dtype: np.dtype | None,
    owner: str = "layer",
) -> dict[str, np.ndarray]:
    """Return the parameters as ndarrays; raise naming any missing, extra or mis-shaped entry.

    ``expected`` is a spec, or the parameter shapes by name; ``owner`` names what they belong to.
    """
    if isinstance(expected, StackSpec):
        expected = expected.parameter_shapes()
    missing = [name for name in expected if name not in params]
    extra = [name for name in params if name not in expected]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    arrays = {}
    for name, shape in expected.items():
        if name not in params:
            continue
        value = params[name]
        try:
            array = np.asarray(value)
        except Exception as error:
            raise TypeError(f"parameter {name!r} cannot be converted to an array: {error}") from error
        if array.shape != shape:
            problems.append(f"{name!r} expected shape {shape}, got {array.shape}")
        arrays[name] = array
    if problems:
        raise ValueError(f"state dict does not match the {owner}: " + "; ".join(problems))
    for name, array in arrays.items():
        if dtype is None:
            if array.dtype not in FLOAT_DTYPES:
                raise TypeError(f"parameter {name!r} must be float32 or float64, got dtype {array.dtype}")
        elif not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise TypeError(f"parameter {name!r} must hold real numbers, got dtype {array.dtype}")
    return arrays


def check_gradient_buffers(
    expected: StackSpec | Mapping[str, tuple[int, ...]], grads: Any, dtype: np.dtype
) -> None:
    """The arrays backward accumulates parameter gradients into, such as a layer's ``grads``.

    The kernels write into them in place, by address, so anything else is refused here.
    ``expected`` is a spec, or the parameter shapes by name (a cell's own names).
    """
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays keyed by parameter name, got {type(grads).__name__}")
    if isinstance(expected, StackSpec):
        expected = expected.parameter_shapes()
    for name, shape in expected.items():
        if name not in grads:
            raise ValueError(f"grads must hold an array for every parameter; {name!r} is missing")
        array = grads[name]
        if not isinstance(array, np.ndarray):
            raise TypeError(f"grads[{name!r}] must be a numpy array, got {type(array).__name__}")
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"grads[{name!r}] must be a {dtype} array of shape {shape}, got {array.dtype} of shape {array.shape}"
            )
        if not (array.flags.c_contiguous and array.flags.writeable):
            raise ValueError(
                f"grads[{name!r}] must be C-contiguous and writable, to accumulate into it in place; "
                f"got an array with c_contiguous={array.flags.c_contiguous}, writeable={array.flags.writeable}"
            )
