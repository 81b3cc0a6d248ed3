"""Gradient checking for fastrnn layers, cells and functional calls.

Example, inside a user's test::

    rnn = fastrnn.RNN(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    report = fastrnn.testing.gradcheck(rnn, x)   # raises GradcheckError on a mismatch
    report["weight_hh_l1_reverse"].max_abs_error

The check compares ``backward`` against central differences of ``forward`` for the
scalar loss ``sum(output * G) + sum(h_n * G_h)`` (LSTM: ``+ sum(c_n * G_c)``), with fixed
random ``G``, ``G_h`` and ``G_c``, for the input, the initial states and every parameter.
With ``lengths`` the forward runs each sequence of a padded batch for its own length, as
torch's packed sequences do, and the check covers that forward's gradients: ``G`` past a
sequence's end then adds nothing to the loss, and the input gradient there must be zero.
A cell's call is one step whose output is its new state: its loss is ``sum(h_1 * G_h)``
(LSTM: ``+ sum(c_1 * G_c)``). It needs float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .cells import _Cell

__all__ = ["GradcheckError", "GradcheckResult", "gradcheck"]


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with central differences."""


@dataclass(frozen=True)
class GradcheckResult:
    """Worst disagreement for one tensor; ``passed`` is ``|a - n| <= atol + rtol*|n|`` everywhere."""

    max_abs_error: float
    max_rel_error: float
    passed: bool


def _as_states(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _from_states(states: tuple | None):
    if states is None:
        return None
    return states[0] if len(states) == 1 else states


def _lengths_keyword(lengths: ArrayLike | None) -> dict[str, ArrayLike]:
    """``lengths`` as a forward keyword, left out when None so that targets without it still work."""
    return {} if lengths is None else {"lengths": lengths}


def _layer_calls(layer, lengths: ArrayLike | None):
    """Forward/backward closures over a layer's own parameter arrays."""
    state = layer.generator.bit_generator.state
    keywords = _lengths_keyword(lengths)

    def forward(inputs, keep):
        layer.generator.bit_generator.state = state  # the same dropout mask every time
        output, finals = layer.forward(inputs["input"], _from_states(inputs["states"]), requires_grad=keep, **keywords)
        return output, _as_states(finals)

    def backward(grad_output, grad_finals):
        layer.zero_grad()
        grad_x, grad_initials = layer.backward(grad_output, _from_states(grad_finals))
        return grad_x, _as_states(grad_initials), layer.grads

    if layer.dtype != np.float64:
        raise TypeError(f"gradcheck needs a float64 layer for central differences, got {layer.dtype}")
    return forward, backward, layer.state_dict()


def _cell_calls(cell):
    """Forward/backward closures over one step of a cell, whose new states are all it returns."""
    no_output = np.zeros(0)

    def forward(inputs, keep):
        finals = cell.forward(inputs["input"], _from_states(inputs["states"]), requires_grad=keep)
        return no_output, _as_states(finals)

    def backward(grad_output, grad_finals):
        cell.zero_grad()
        grad_x, grad_initials = cell.backward(_from_states(grad_finals))
        return grad_x, _as_states(grad_initials), cell.grads

    if cell.dtype != np.float64:
        raise TypeError(f"gradcheck needs a float64 cell for central differences, got {cell.dtype}")
    return forward, backward, cell.state_dict()


def _functional_calls(module, cell, params, options, lengths: ArrayLike | None):
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {list(CELLS)}, got {cell!r}")
    module_forward = getattr(module, f"{cell}_forward")
    module_backward = getattr(module, f"{cell}_backward")
    generator = options.get("generator")
    state = generator.bit_generator.state if generator is not None else None
    arrays = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
    keywords = {**options, **_lengths_keyword(lengths)}
    saved_holder = {}

    def forward(inputs, keep):
        if generator is not None:
            generator.bit_generator.state = state
        output, finals, saved = module_forward(
            inputs["input"], _from_states(inputs["states"]), arrays, requires_grad=keep, **keywords
        )
        saved_holder["saved"] = saved
        return output, _as_states(finals)

    def backward(grad_output, grad_finals):
        grad_x, grad_initials, grads = module_backward(saved_holder["saved"], grad_output, _from_states(grad_finals))
        return grad_x, _as_states(grad_initials), grads

    return forward, backward, arrays


CELLS = ("rnn", "lstm", "gru")


def gradcheck(
    target: Any,
    x: ArrayLike,
    hx: Any = None,
    *,
    params: Mapping[str, ArrayLike] | None = None,
    cell: str = "rnn",
    eps: float = 1e-6,
    atol: float = 1e-7,
    rtol: float = 1e-5,
    seed: int = 0,
    raise_on_failure: bool = True,
    lengths: ArrayLike | None = None,
    **options: Any,
) -> dict[str, GradcheckResult]:
    """Check ``target``'s gradients against central differences in float64.

    ``target`` is a layer (``fastrnn.RNN``, ``LSTM``, ``GRU`` or their ``fastrnn.reference``
    twins), a cell (``fastrnn.RNNCell``, ``LSTMCell``, ``GRUCell`` or their twins; ``x`` is
    then one step, (B, I) or (I,)) or a functional module (``fastrnn.functional``,
    ``fastrnn.reference``); the latter also needs ``params``, runs ``{cell}_forward``/
    ``{cell}_backward`` (``cell`` one of ``"rnn"``, ``"lstm"``, ``"gru"``) and takes the
    functional keyword ``options`` (``nonlinearity``, ``batch_first``, ``dropout``,
    ``training``, ``generator``).
    ``hx`` is what the forward takes: an array, or LSTM's pair ``(h_0, c_0)``.
    ``lengths`` (B integers in [0, T], any order; batched input only) is passed to the
    forward of a layer or functional call, which then runs each sequence for its own
    length; a cell runs a single step and takes none.

    Returns the worst absolute and relative error per tensor, keyed ``"input"``, the
    initial states (``"hx"``; LSTM: ``"h_0"`` and ``"c_0"``) and the parameter names.
    Raises :class:`GradcheckError` with a per-tensor report when any element exceeds
    ``atol + rtol * |numeric|``, unless ``raise_on_failure`` is false.
    """
    x = np.array(x, dtype=np.float64)
    if isinstance(target, _Cell):
        if params is not None or options:
            raise TypeError("gradcheck of a cell takes no params or functional options")
        if lengths is not None:
            raise ValueError(
                "gradcheck of a cell takes no lengths: a cell runs one step of every sequence; "
                "check a layer or a functional call with lengths instead"
            )
        forward, backward, tensors = _cell_calls(target)
    elif hasattr(target, "backward") and hasattr(target, "state_dict"):
        if params is not None or options:
            raise TypeError("gradcheck of a layer takes no params or functional options")
        forward, backward, tensors = _layer_calls(target, lengths)
    elif hasattr(target, "rnn_forward") and hasattr(target, "rnn_backward"):
        if params is None:
            raise TypeError("gradcheck of a functional module needs params=")
        forward, backward, tensors = _functional_calls(target, cell, params, options, lengths)
    else:
        raise TypeError(
            "gradcheck target must be a layer or a module with rnn_forward/rnn_backward, or a cell, "
            f"got {type(target).__name__}"
        )
    given = _as_states(hx) if hx is not None else None
    states = None if given is None else tuple(None if s is None else np.array(s, dtype=np.float64) for s in given)
    # Only the shapes are needed here, so nothing is kept for backward.
    output, finals = forward({"input": x, "states": states}, False)
    # Check the initial states too: differentiate at the zeros they default to.
    states = tuple(np.zeros_like(final) if states is None or states[i] is None else states[i]
                   for i, final in enumerate(finals))
    inputs = {"input": x, "states": states}
    rng = np.random.default_rng(seed)
    grad_output = rng.standard_normal(output.shape)
    grad_finals = tuple(rng.standard_normal(final.shape) for final in finals)
    forward(inputs, True)
    grad_x, grad_initials, param_grads = backward(grad_output, grad_finals)
    state_names = ("hx",) if len(states) == 1 else ("h_0", "c_0")
    analytic = {"input": grad_x, **dict(zip(state_names, grad_initials, strict=True)),
                **{name: param_grads[name].copy() for name in tensors}}
    perturbed = {"input": x, **dict(zip(state_names, states, strict=True)), **tensors}

    def loss() -> float:
        out, last = forward(inputs, False)
        return float(np.sum(out * grad_output) + sum(np.sum(s * g) for s, g in zip(last, grad_finals, strict=True)))

    results = {}
    for name, array in perturbed.items():
        numeric = _central_differences(array, loss, eps)
        results[name] = _compare(analytic[name], numeric, atol, rtol)
    failed = [name for name, result in results.items() if not result.passed]
    if failed and raise_on_failure:
        raise GradcheckError(_report(results, atol, rtol))
    return results


def _central_differences(array: np.ndarray, loss: Callable[[], float], eps: float) -> np.ndarray:
    numeric = np.empty(array.shape)
    flat = array.reshape(-1)  # every tensor here is contiguous, so this is a view
    for index in range(flat.size):
        original = flat[index]
        flat[index] = original + eps
        plus = loss()
        flat[index] = original - eps
        minus = loss()
        flat[index] = original
        numeric.reshape(-1)[index] = (plus - minus) / (2 * eps)
    return numeric


def _compare(analytic: np.ndarray, numeric: np.ndarray, atol: float, rtol: float) -> GradcheckResult:
    error = np.abs(analytic - numeric)
    scale = np.abs(numeric)
    relative = error / np.maximum(scale, np.finfo(np.float64).tiny)
    passed = bool(np.all(error <= atol + rtol * scale))
    return GradcheckResult(float(error.max(initial=0.0)), float(relative.max(initial=0.0)), passed)


def _report(results: dict[str, GradcheckResult], atol: float, rtol: float) -> str:
    lines = [f"gradient check failed (atol={atol:g}, rtol={rtol:g}):"]
    width = max(len(name) for name in results)
    for name, result in results.items():
        mark = "ok  " if result.passed else "FAIL"
        lines.append(
            f"  {mark} {name:<{width}}  max abs error {result.max_abs_error:.3e}  "
            f"max rel error {result.max_rel_error:.3e}"
        )
    return "\n".join(lines)
