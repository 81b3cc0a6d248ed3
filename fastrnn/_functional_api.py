"""The functional entry points, written once and bound to an engine by each public module."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._frontend import Saved, run_backward, run_forward
from ._validation import as_array, check_dropout, check_nonlinearity, spec_from_params


def functional_forward(
    engine,
    x: Any,
    hx: Any,
    params: Any,
    *,
    nonlinearity: str,
    batch_first: bool,
    dropout: float,
    training: bool,
    requires_grad: bool,
    generator: np.random.Generator | None,
):
    cell = check_nonlinearity(nonlinearity)
    dropout = check_dropout(dropout)
    spec, arrays = spec_from_params(params, cell)
    dtypes = {array.dtype for array in arrays.values()}
    x = as_array("input", x, None)
    x_dtype = x.dtype
    if len(dtypes) != 1 or x_dtype not in dtypes:
        found = ", ".join(sorted(str(d) for d in dtypes))
        raise TypeError(f"input has dtype {x_dtype} but params have dtype {found}; all must match")
    if generator is not None and not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
    return run_forward(
        engine, spec, x, hx, arrays, dtype=x_dtype, batch_first=bool(batch_first), dropout=dropout,
        training=bool(training), requires_grad=bool(requires_grad), generator=generator,
    )


def functional_backward(saved: Saved | None, grad_output: Any, grad_h_n: Any = None):
    return run_backward(saved, grad_output, grad_h_n, None)
