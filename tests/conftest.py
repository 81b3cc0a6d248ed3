"""Shared test set-up: the hypothesis profile and builders for layers that share weights.

Every comparison in the suite runs one loss, ``sum(output * G) + sum(h_n * G_h)``, through
each implementation and compares the forward results, the input and state gradients and
every parameter gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
from hypothesis import settings

import fastrnn
from fastrnn import reference

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
STATE_KEYS = ("output", "h_n", "grad_x", "grad_hx")


@dataclass(frozen=True)
class Config:
    """Constructor arguments shared by ``fastrnn.RNN``, ``reference.RNN`` and ``torch.nn.RNN``."""

    input_size: int = 4
    hidden_size: int = 6
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    def __str__(self) -> str:
        """Only the arguments that differ from the defaults, for short test ids."""
        changed = [
            f"{field.name}={getattr(self, field.name)!r}"
            for field in fields(self)
            if getattr(self, field.name) != field.default
        ]
        return f"Config({', '.join(changed)})"

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def input_shape(self, steps: int, batch: int, batched: bool = True) -> tuple[int, ...]:
        if not batched:
            return (steps, self.input_size)
        if self.batch_first:
            return (batch, steps, self.input_size)
        return (steps, batch, self.input_size)

    def state_shape(self, batch: int, batched: bool = True) -> tuple[int, ...]:
        stacked = self.num_layers * self.directions
        return (stacked, batch, self.hidden_size) if batched else (stacked, self.hidden_size)

    def output_shape(self, steps: int, batch: int, batched: bool = True) -> tuple[int, ...]:
        width = self.directions * self.hidden_size
        if not batched:
            return (steps, width)
        if self.batch_first:
            return (batch, steps, width)
        return (steps, batch, width)


def random_array(shape: tuple[int, ...], dtype, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@dataclass
class Problem:
    """One forward-backward problem: the input, initial state and upstream gradients."""

    x: np.ndarray
    hx: np.ndarray | None
    grad_output: np.ndarray
    grad_h_n: np.ndarray


def make_problem(
    config: Config, dtype, *, steps: int = 5, batch: int = 3, batched: bool = True,
    with_hx: bool = True, seed: int = 0,
) -> Problem:
    return Problem(
        x=random_array(config.input_shape(steps, batch, batched), dtype, seed),
        hx=random_array(config.state_shape(batch, batched), dtype, seed + 1) if with_hx else None,
        grad_output=random_array(config.output_shape(steps, batch, batched), dtype, seed + 2),
        grad_h_n=random_array(config.state_shape(batch, batched), dtype, seed + 3),
    )


def make_layers(config: Config, dtype, seed: int = 0) -> tuple[fastrnn.RNN, reference.RNN]:
    """A fastrnn layer and a reference layer with the same weights and dropout generator."""
    fast = fastrnn.RNN(**vars(config), dtype=dtype, seed=seed)
    slow = reference.RNN(**vars(config), dtype=dtype, seed=seed)
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def make_torch_layers(config: Config, dtype, seed: int = 0):
    """``(torch_rnn, fast, slow)``: torch's own initialisation copied into both of ours."""
    import torch

    torch.manual_seed(seed)
    torch_dtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    torch_rnn = torch.nn.RNN(**vars(config), dtype=torch_dtype)
    fast = fastrnn.RNN(**vars(config), dtype=dtype)
    slow = reference.RNN(**vars(config), dtype=dtype)
    fast.load_state_dict(torch_rnn.state_dict())
    slow.load_state_dict(torch_rnn.state_dict())
    return torch_rnn, fast, slow


def run_layer(layer, problem: Problem) -> dict[str, np.ndarray]:
    """Forward and backward through one of our layers; fresh copies of every result."""
    layer.zero_grad()
    output, h_n = layer(problem.x, problem.hx, requires_grad=True)
    grad_x, grad_hx = layer.backward(problem.grad_output, problem.grad_h_n)
    results = {"output": output, "h_n": h_n, "grad_x": grad_x, "grad_hx": grad_hx}
    results.update(layer.grads)
    return {name: np.array(value) for name, value in results.items()}


def run_torch(torch_rnn, problem: Problem) -> dict[str, np.ndarray]:
    import torch

    x = torch.tensor(problem.x, requires_grad=True)
    # torch gives no gradient for an omitted hx, while ours is the gradient at the zeros hx
    # defaults to; torch gets those zeros explicitly so both have one.
    initial = problem.hx if problem.hx is not None else np.zeros_like(problem.grad_h_n)
    hx = torch.tensor(initial, requires_grad=True)
    output, h_n = torch_rnn(x, hx)
    loss = (output * torch.from_numpy(problem.grad_output)).sum() + (h_n * torch.from_numpy(problem.grad_h_n)).sum()
    torch_rnn.zero_grad()
    loss.backward()
    results = {
        "output": output.detach().numpy(),
        "h_n": h_n.detach().numpy(),
        "grad_x": x.grad.numpy(),
        "grad_hx": hx.grad.numpy(),
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
