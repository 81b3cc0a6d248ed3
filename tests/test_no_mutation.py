"""Callers' arrays are never written to, and results never alias them."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference

from .conftest import Config, make_problem

CONFIGS = [
    Config(nonlinearity="relu"),
    Config(num_layers=2, bidirectional=True, dropout=0.3),
    Config(num_layers=3, batch_first=True),
    Config(input_size=8, hidden_size=72, num_layers=2),
]
CONFIG_IDS = [str(config) for config in CONFIGS]


def _snapshot(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.array(value, copy=True) for name, value in arrays.items()}


def _assert_unchanged(arrays: dict[str, np.ndarray], snapshot: dict[str, np.ndarray]) -> None:
    for name, value in snapshot.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=f"{name} was modified")


def _assert_no_aliasing(results, inputs: dict[str, np.ndarray]) -> None:
    for result in results:
        for name, value in inputs.items():
            assert not np.shares_memory(result, value), f"a result shares memory with {name}"


def _caller_arrays(problem) -> dict[str, np.ndarray]:
    return {
        "x": problem.x, "hx": problem.hx, "grad_output": problem.grad_output, "grad_h_n": problem.grad_h_n,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("layer_class", [fastrnn.RNN, reference.RNN], ids=["fastrnn", "reference"])
def test_layer_leaves_inputs_and_gradients_unchanged(layer_class, config, batched, dtype):
    layer = layer_class(**vars(config), dtype=dtype, seed=0)
    problem = make_problem(config, dtype, steps=70, batch=16, batched=batched)
    arrays = _caller_arrays(problem)
    snapshot = _snapshot(arrays)

    output, h_n = layer(problem.x, problem.hx)
    grad_x, grad_hx = layer.backward(problem.grad_output, problem.grad_h_n)
    layer.backward(problem.grad_output, problem.grad_h_n)
    layer.eval()
    eval_output, eval_h_n = layer(problem.x, problem.hx)

    _assert_unchanged(arrays, snapshot)
    _assert_no_aliasing([output, h_n, grad_x, grad_hx, eval_output, eval_h_n], arrays)


@pytest.mark.parametrize("layer_class", [fastrnn.RNN, reference.RNN], ids=["fastrnn", "reference"])
def test_load_state_dict_leaves_the_source_unchanged_and_unshared(layer_class):
    config = Config(num_layers=2, bidirectional=True)
    source = _snapshot(layer_class(**vars(config), dtype=np.float64, seed=1).state_dict())
    snapshot = _snapshot(source)
    layer = layer_class(**vars(config), dtype=np.float64, seed=0)

    layer.load_state_dict(source)
    problem = make_problem(config, np.float64)
    layer(problem.x, problem.hx)
    layer.backward(problem.grad_output, problem.grad_h_n)
    for name, value in layer.state_dict().items():
        value -= 0.1 * layer.grads[name]  # an optimiser step on the layer's own arrays

    _assert_unchanged(source, snapshot)


def test_load_state_dict_leaves_torch_tensors_unchanged():
    torch = pytest.importorskip("torch")
    torch_rnn = torch.nn.RNN(4, 6, num_layers=2)
    snapshot = {name: tensor.clone() for name, tensor in torch_rnn.state_dict().items()}
    layer = fastrnn.RNN(4, 6, num_layers=2)

    layer.load_state_dict(torch_rnn.state_dict())
    for value in layer.state_dict().values():
        value += 1.0

    for name, tensor in torch_rnn.state_dict().items():
        assert torch.equal(tensor, snapshot[name]), f"{name} was modified"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("module", [fastrnn.functional, reference], ids=["fastrnn", "reference"])
def test_functional_leaves_inputs_params_and_gradients_unchanged(module, config, batched, dtype):
    params = reference.RNN(**vars(config), dtype=dtype, seed=0).state_dict()
    problem = make_problem(config, dtype, steps=70, batch=16, batched=batched)
    arrays = _caller_arrays(problem)
    snapshot = _snapshot(arrays)
    params_snapshot = _snapshot(params)
    options = {
        "nonlinearity": config.nonlinearity, "batch_first": config.batch_first, "dropout": config.dropout,
        "training": True, "generator": np.random.default_rng(2),
    }

    output, h_n, saved = module.rnn_forward(problem.x, problem.hx, params, **options)
    grad_x, grad_hx, param_grads = module.rnn_backward(saved, problem.grad_output, problem.grad_h_n)
    module.rnn_backward(saved, problem.grad_output, problem.grad_h_n)
    inference_output, inference_h_n, _ = module.rnn_forward(
        problem.x, problem.hx, params, **{**options, "training": False}, requires_grad=False
    )

    _assert_unchanged(arrays, snapshot)
    _assert_unchanged(params, params_snapshot)
    results = [output, h_n, grad_x, grad_hx, inference_output, inference_h_n, *param_grads.values()]
    _assert_no_aliasing(results, {**arrays, **params})
