"""The bench's peers compute what torch computes from the same weights.

The ONNX graph reorders torch's gate blocks into ONNX's order and the jax models rewrite
torch's gate math, so both are checked against torch.nn on a tiny stack: what they are
timed doing is the same function fastrnn computes.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastrnn._bench_peers import CELLS, Case, build_layer, jax_model, jax_params, ort_session

torch = pytest.importorskip("torch")

STACKS = [(2, True), (1, False)]  # (num_layers, bidirectional)
TOLERANCES = {"rtol": 1e-5, "atol": 1e-5}


def torch_problem(case: Case):
    """A torch layer with torch's initialisation, its weights as numpy, an input and an output gradient."""
    torch.manual_seed(0)
    layer = build_layer(
        torch.nn, case.cell, case.input_size, case.hidden_size, case.num_layers, bidirectional=case.bidirectional
    )
    weights = {name: value.detach().numpy() for name, value in layer.state_dict().items()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.steps, case.batch, case.input_size)).astype(np.float32)
    grad_output = rng.standard_normal((case.steps, case.batch, case.directions * case.hidden_size)).astype(np.float32)
    return layer, weights, x, grad_output


def tiny_case(cell: str, num_layers: int, bidirectional: bool) -> Case:
    return Case(cell, steps=3, batch=2, input_size=4, hidden_size=5, num_layers=num_layers,
                bidirectional=bidirectional, dtype=np.float32)


@pytest.mark.parametrize(("num_layers", "bidirectional"), STACKS)
@pytest.mark.parametrize("cell", CELLS)
def test_onnx_graph_matches_torch(cell, num_layers, bidirectional):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    case = tiny_case(cell, num_layers, bidirectional)
    layer, weights, x, _ = torch_problem(case)
    expected, _ = layer(torch.from_numpy(x))
    (output,) = ort_session(case, weights).run(["output"], {"x": x})
    np.testing.assert_allclose(output, expected.detach().numpy(), **TOLERANCES)


@pytest.mark.parametrize(("num_layers", "bidirectional"), STACKS)
@pytest.mark.parametrize("cell", CELLS)
def test_jax_model_matches_torch(cell, num_layers, bidirectional):
    jax = pytest.importorskip("jax")
    case = tiny_case(cell, num_layers, bidirectional)
    layer, weights, x, grad_output = torch_problem(case)
    x_tensor = torch.tensor(x, requires_grad=True)
    expected, _ = layer(x_tensor)
    expected.backward(torch.from_numpy(grad_output))

    model = jax_model(cell)
    params = jax_params(case, weights)
    output = model(params, x)
    grad_x = jax.grad(lambda xs: (model(params, xs) * grad_output).sum())(x)
    np.testing.assert_allclose(np.asarray(output), expected.detach().numpy(), **TOLERANCES)
    np.testing.assert_allclose(np.asarray(grad_x), x_tensor.grad.numpy(), **TOLERANCES)
