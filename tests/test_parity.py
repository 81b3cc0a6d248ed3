"""fastrnn against the NumPy reference and torch.nn.RNN, with the same weights."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference

from .conftest import (
    VALUE_TOLERANCES,
    Config,
    assert_results_close,
    make_layers,
    make_problem,
    make_torch_layers,
    random_array,
    run_layer,
    run_torch,
)

torch = pytest.importorskip("torch")

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


@DTYPES
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda n: f"L{n}")
def test_layer_matches_reference_and_torch(
    num_layers, bidirectional, nonlinearity, bias, batch_first, with_hx, batched, dtype
):
    config = Config(
        num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nonlinearity,
        bias=bias, batch_first=batch_first,
    )
    torch_rnn, fast, slow = make_torch_layers(config, dtype)
    problem = make_problem(config, dtype, batched=batched, with_hx=with_hx)

    results = run_layer(fast, problem)

    assert_results_close(results, run_layer(slow, problem), dtype)
    assert_results_close(results, run_torch(torch_rnn, problem), dtype)


# Batch and hidden sizes on both sides of the kernels' choices for each step's product
# h_{t-1} @ W_hh^T: a numba loop for a few rows, one BLAS call, and BLAS over row chunks
# (B*H*H past 4 * 65536, where OpenBLAS would go multi-threaded).
STEP_PRODUCT_SIZES = [(1, 6), (3, 6), (4, 5), (16, 72), (64, 72)]


@DTYPES
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)], ids=["L1_uni", "L2_bi"])
@pytest.mark.parametrize("batch,hidden_size", STEP_PRODUCT_SIZES, ids=lambda size: str(size))
def test_step_product_sizes_match_reference_and_torch(
    batch, hidden_size, num_layers, bidirectional, nonlinearity, dtype
):
    config = Config(
        input_size=8, hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
        nonlinearity=nonlinearity,
    )
    torch_rnn, fast, slow = make_torch_layers(config, dtype)
    problem = make_problem(config, dtype, steps=4, batch=batch)

    results = run_layer(fast, problem)

    assert_results_close(results, run_layer(slow, problem), dtype)
    assert_results_close(results, run_torch(torch_rnn, problem), dtype)


FUNCTIONAL_CONFIGS = [
    Config(),
    Config(num_layers=2, bidirectional=True, nonlinearity="relu"),
    Config(num_layers=3, bias=False, batch_first=True),
]


@DTYPES
@pytest.mark.parametrize("config", FUNCTIONAL_CONFIGS, ids=str)
@pytest.mark.parametrize("module", [fastrnn.functional, reference], ids=["fastrnn", "reference"])
def test_functional_api_equals_layer(module, config, dtype):
    layer = (fastrnn.RNN if module is fastrnn.functional else reference.RNN)(
        **vars(config), dtype=dtype, seed=3
    )
    problem = make_problem(config, dtype)
    expected = run_layer(layer, problem)

    output, h_n, saved = module.rnn_forward(
        problem.x, problem.hx, layer.state_dict(), nonlinearity=config.nonlinearity,
        batch_first=config.batch_first,
    )
    grad_x, grad_hx, param_grads = module.rnn_backward(saved, problem.grad_output, problem.grad_h_n)

    actual = {"output": output, "h_n": h_n, "grad_x": grad_x, "grad_hx": grad_hx, **param_grads}
    assert list(param_grads) == list(layer.state_dict())
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def test_functional_api_takes_torch_state_dict():
    config = Config(num_layers=2, bidirectional=True)
    torch_rnn, fast, _ = make_torch_layers(config, np.float32)
    problem = make_problem(config, np.float32)
    expected = run_layer(fast, problem)

    output, h_n, saved = fastrnn.functional.rnn_forward(problem.x, problem.hx, torch_rnn.state_dict())
    grad_x, grad_hx, param_grads = fastrnn.functional.rnn_backward(saved, problem.grad_output, problem.grad_h_n)

    actual = {"output": output, "h_n": h_n, "grad_x": grad_x, "grad_hx": grad_hx, **param_grads}
    assert_results_close(actual, expected, np.float32)


@DTYPES
@pytest.mark.parametrize("steps", [1, 5, 64, 65, 150])
@pytest.mark.parametrize(
    "config",
    [
        Config(),
        Config(num_layers=2),
        Config(num_layers=3, nonlinearity="relu", batch_first=True),
        Config(num_layers=2, bidirectional=True),
        Config(num_layers=2, bias=False),
    ],
    ids=str,
)
def test_inference_forward_equals_training_forward(config, steps, dtype):
    # Unidirectional stacks without gradients advance all layers chunk by chunk (64 steps),
    # a different code path from the training forward; 150 steps runs three chunks.
    fast, slow = make_layers(config, dtype)
    problem = make_problem(config, dtype, steps=steps)

    trained_output, trained_h_n = fast(problem.x, problem.hx)
    no_grad_output, no_grad_h_n = fast(problem.x, problem.hx, requires_grad=False)
    fast.eval()
    eval_output, eval_h_n = fast(problem.x, problem.hx)
    expected_output, expected_h_n = slow(problem.x, problem.hx, requires_grad=False)

    tolerances = VALUE_TOLERANCES[np.dtype(dtype).name]
    for output, h_n in [(no_grad_output, no_grad_h_n), (eval_output, eval_h_n)]:
        np.testing.assert_allclose(output, trained_output, **tolerances)
        np.testing.assert_allclose(h_n, trained_h_n, **tolerances)
    np.testing.assert_allclose(eval_output, expected_output, **tolerances)
    np.testing.assert_allclose(eval_h_n, expected_h_n, **tolerances)


@DTYPES
def test_chunked_inference_without_hx_and_unbatched(dtype):
    config = Config(num_layers=3)
    fast, slow = make_layers(config, dtype)
    fast.eval()
    slow.eval()
    tolerances = VALUE_TOLERANCES[np.dtype(dtype).name]
    for x in [random_array((150, 4), dtype, 0), random_array((150, 2, 4), dtype, 1)]:
        output, h_n = fast(x)
        expected_output, expected_h_n = slow(x)
        assert output.shape == expected_output.shape
        np.testing.assert_allclose(output, expected_output, **tolerances)
        np.testing.assert_allclose(h_n, expected_h_n, **tolerances)


@DTYPES
def test_chunked_inference_with_blas_sized_steps_matches_torch(dtype):
    config = Config(input_size=8, hidden_size=72, num_layers=2, nonlinearity="relu")
    torch_rnn, fast, _ = make_torch_layers(config, dtype)
    fast.eval()
    problem = make_problem(config, dtype, steps=150, batch=16)

    output, h_n = fast(problem.x, problem.hx)

    with torch.no_grad():
        expected_output, expected_h_n = torch_rnn(torch.from_numpy(problem.x), torch.from_numpy(problem.hx))
    tolerances = VALUE_TOLERANCES[np.dtype(dtype).name]
    np.testing.assert_allclose(output, expected_output.numpy(), **tolerances)
    np.testing.assert_allclose(h_n, expected_h_n.numpy(), **tolerances)


def test_long_sequence_gradients_match_torch():
    config = Config(num_layers=2, bidirectional=True)
    torch_rnn, fast, _ = make_torch_layers(config, np.float64)
    problem = make_problem(config, np.float64, steps=150, batch=2)

    assert_results_close(run_layer(fast, problem), run_torch(torch_rnn, problem), np.float64)
