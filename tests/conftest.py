"""Shared test set-up: the hypothesis profile and builders for layers that share weights.

Every comparison in the suite runs one loss, ``sum(output * G) + sum(h_n * G_h)`` (LSTM:
``+ sum(c_n * G_c)``), through each implementation and compares the forward results, the
input and state gradients and every parameter gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import settings

import fastrnn
from fastrnn import _parallel, _stack, reference

settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# float32 tanh is a rational approximation a few ulps from libm's, and the kernels sum in
# another order than torch or NumPy, so float32 agrees to ~1e-6 and float64 to ~1e-15.
VALUE_TOLERANCES = {
    "float32": {"rtol": 1e-5, "atol": 1e-5},
    "float64": {"rtol": 1e-10, "atol": 1e-10},
}
# Parameter gradients sum over every step and batch entry, so rounding grows with the size
# of the summed terms; their atol is scaled by the largest gradient entry, which grows alike.
PARAM_GRAD_TOLERANCES = {
    "float32": {"rtol": 1e-4, "atol": 1e-5},
    "float64": {"rtol": 1e-10, "atol": 1e-10},
}
# Results compared with the value tolerances: layers' (run_layer) and cells' (test_cells).
STATE_KEYS = ("output", "h_n", "c_n", "h_1", "c_1", "grad_x", "grad_hx", "grad_h_0", "grad_c_0")


class _Shapes:
    """The shapes of a layer's arguments and results, read from its constructor arguments.

    ``layer_name`` names the class in ``fastrnn``, ``fastrnn.reference`` and ``torch.nn``;
    ``state_names`` its states, ``h`` first (as in ``fastrnn._cells``).
    """

    layer_name: ClassVar[str]
    state_names: ClassVar[tuple[str, ...]] = ("h",)

    def __str__(self) -> str:
        """Only the arguments that differ from the defaults, for short test ids."""
        changed = [
            f"{field.name}={getattr(self, field.name)!r}"
            for field in fields(self)
            if getattr(self, field.name) != field.default
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """The width of ``h`` per direction."""
        return self.hidden_size

    def input_shape(self, steps: int, batch: int, batched: bool = True) -> tuple[int, ...]:
        if not batched:
            return (steps, self.input_size)
        if self.batch_first:
            return (batch, steps, self.input_size)
        return (steps, batch, self.input_size)

    def state_shape(self, batch: int, batched: bool = True) -> tuple[int, ...]:
        """The shape of ``h_0`` and ``h_n``."""
        return self.state_shapes(batch, batched)[0]

    def state_shapes(self, batch: int, batched: bool = True) -> tuple[tuple[int, ...], ...]:
        """The shape of each state, in ``state_names`` order: ``h`` is ``output_size`` wide, ``c`` ``hidden_size``."""
        stacked = self.num_layers * self.directions
        widths = [self.output_size if name == "h" else self.hidden_size for name in self.state_names]
        return tuple((stacked, batch, width) if batched else (stacked, width) for width in widths)

    def output_shape(self, steps: int, batch: int, batched: bool = True) -> tuple[int, ...]:
        width = self.directions * self.output_size
        if not batched:
            return (steps, width)
        if self.batch_first:
            return (batch, steps, width)
        return (steps, batch, width)


@dataclass(frozen=True)
class Config(_Shapes):
    """Constructor arguments shared by ``fastrnn.RNN``, ``reference.RNN`` and ``torch.nn.RNN``."""

    layer_name: ClassVar[str] = "RNN"

    input_size: int = 4
    hidden_size: int = 6
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False


@dataclass(frozen=True)
class LSTMConfig(_Shapes):
    """Constructor arguments shared by ``fastrnn.LSTM``, ``reference.LSTM`` and ``torch.nn.LSTM``."""

    layer_name: ClassVar[str] = "LSTM"
    state_names: ClassVar[tuple[str, ...]] = ("h", "c")

    input_size: int = 4
    hidden_size: int = 6
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size


@dataclass(frozen=True)
class GRUConfig(_Shapes):
    """Constructor arguments shared by ``fastrnn.GRU``, ``reference.GRU`` and ``torch.nn.GRU``."""

    layer_name: ClassVar[str] = "GRU"

    input_size: int = 4
    hidden_size: int = 6
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False


def random_array(shape: tuple[int, ...], dtype, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@dataclass
class Problem:
    """One forward-backward problem: the input, initial state and upstream gradients.

    ``hx`` and ``grad_h_n`` are what forward and backward take: one array, or for LSTM the
    pairs ``(h_0, c_0)`` and ``(grad_h_n, grad_c_n)``; ``hx`` may be None (zeros), and
    either part of LSTM's pair too.
    """

    x: np.ndarray
    hx: np.ndarray | tuple | None
    grad_output: np.ndarray
    grad_h_n: np.ndarray | tuple


def _as_states(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _from_states(states: tuple):
    return states[0] if len(states) == 1 else states


def make_problem(
    config: _Shapes, dtype, *, steps: int = 5, batch: int = 3, batched: bool = True,
    with_hx: bool = True, seed: int = 0,
) -> Problem:
    shapes = config.state_shapes(batch, batched)

    def states(first_seed: int):
        return _from_states(tuple(random_array(shape, dtype, first_seed + 10 * i) for i, shape in enumerate(shapes)))

    return Problem(
        x=random_array(config.input_shape(steps, batch, batched), dtype, seed),
        hx=states(seed + 1) if with_hx else None,
        grad_output=random_array(config.output_shape(steps, batch, batched), dtype, seed + 2),
        grad_h_n=states(seed + 3),
    )


def make_layers(config: _Shapes, dtype, seed: int = 0):
    """A fastrnn layer and a reference layer with the same weights and dropout generator."""
    fast = getattr(fastrnn, config.layer_name)(**vars(config), dtype=dtype, seed=seed)
    slow = getattr(reference, config.layer_name)(**vars(config), dtype=dtype, seed=seed)
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def make_torch_layers(config: _Shapes, dtype, seed: int = 0):
    """``(torch_rnn, fast, slow)``: torch's own initialisation copied into both of ours."""
    import torch

    torch.manual_seed(seed)
    torch_dtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    torch_rnn = getattr(torch.nn, config.layer_name)(**vars(config), dtype=torch_dtype)
    fast = getattr(fastrnn, config.layer_name)(**vars(config), dtype=dtype)
    slow = getattr(reference, config.layer_name)(**vars(config), dtype=dtype)
    fast.load_state_dict(torch_rnn.state_dict())
    slow.load_state_dict(torch_rnn.state_dict())
    return torch_rnn, fast, slow


def _state_results(finals: tuple, grad_initials: tuple) -> dict:
    """The final states and initial states' gradients by name: ``h_n``, ``grad_hx`` (LSTM:
    ``h_n``, ``c_n``, ``grad_h_0``, ``grad_c_0``)."""
    if len(finals) == 1:
        return {"h_n": finals[0], "grad_hx": grad_initials[0]}
    return {"h_n": finals[0], "c_n": finals[1], "grad_h_0": grad_initials[0], "grad_c_0": grad_initials[1]}


def run_layer(layer, problem: Problem) -> dict[str, np.ndarray]:
    """Forward and backward through one of our layers; fresh copies of every result."""
    layer.zero_grad()
    output, finals = layer(problem.x, problem.hx, requires_grad=True)
    grad_x, grad_initials = layer.backward(problem.grad_output, problem.grad_h_n)
    results = {"output": output, "grad_x": grad_x, **_state_results(_as_states(finals), _as_states(grad_initials))}
    results.update(layer.grads)
    return {name: np.array(value) for name, value in results.items()}


def run_torch(torch_rnn, problem: Problem) -> dict[str, np.ndarray]:
    import torch

    x = torch.tensor(problem.x, requires_grad=True)
    grad_finals = _as_states(problem.grad_h_n)
    # torch gives no gradient for an omitted hx, while ours is the gradient at the zeros hx
    # defaults to; torch gets those zeros explicitly so both have one.
    given = _as_states(problem.hx) if problem.hx is not None else (None,) * len(grad_finals)
    initial = tuple(
        torch.tensor(np.zeros_like(grad) if value is None else value, requires_grad=True)
        for value, grad in zip(given, grad_finals, strict=True)
    )
    output, finals = torch_rnn(x, _from_states(initial))
    finals = _as_states(finals)
    loss = (output * torch.from_numpy(problem.grad_output)).sum()
    for final, grad in zip(finals, grad_finals, strict=True):
        loss = loss + (final * torch.from_numpy(grad)).sum()
    torch_rnn.zero_grad()
    loss.backward()
    results = {
        "output": output.detach().numpy(),
        "grad_x": x.grad.numpy(),
        **_state_results(tuple(final.detach().numpy() for final in finals), tuple(s.grad.numpy() for s in initial)),
    }
    results.update({name: param.grad.numpy() for name, param in torch_rnn.named_parameters()})
    return results


def assert_results_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], dtype) -> None:
    """Compare every result of :func:`run_layer` / :func:`run_torch` by name."""
    assert actual.keys() == expected.keys()
    name_of_dtype = np.dtype(dtype).name
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        assert actual[name].dtype == value.dtype, name
        if name in STATE_KEYS:
            tolerances = VALUE_TOLERANCES[name_of_dtype]
        else:
            tolerances = dict(PARAM_GRAD_TOLERANCES[name_of_dtype])
            tolerances["atol"] *= max(1.0, float(np.abs(value[np.isfinite(value)]).max(initial=0.0)))
        np.testing.assert_allclose(actual[name], value, err_msg=name, **tolerances)


@pytest.fixture
def parallel_engine(monkeypatch):
    """Two threads for every layer, counting the layer kernels run in parallel pieces."""
    original_threads = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    monkeypatch.setattr(_stack, "PARALLEL_RECURRENCE_WORK", 0)
    calls = []
    real_run_kernel = _parallel.run_kernel

    def counting_run_kernel(serial, parallel, pieces, *args):
        if pieces:
            calls.append(pieces)
        real_run_kernel(serial, parallel, pieces, *args)

    monkeypatch.setattr(_parallel, "run_kernel", counting_run_kernel)
    yield calls
    fastrnn.set_num_threads(original_threads)
