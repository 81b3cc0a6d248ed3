"""The bench's peers compute what torch computes from the same weights.

The ONNX graph reorders torch's gate blocks into ONNX's order and the jax models rewrite
torch's gate math, so both are checked against torch.nn on a tiny stack: what they are
timed doing is the same function fastrnn computes. With lengths, fastrnn, its reference
and the ONNX graph are checked against torch's PackedSequence path, the one the torch
peer is timed on. ``--api torch``'s two modules are checked against each other through the
very calls the bench times.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn._bench_peers import (
    CELLS,
    TORCH_API_MODULES,
    Case,
    PeerUnavailable,
    build_layer,
    jax_model,
    jax_params,
    jax_peer,
    ort_inputs,
    ort_session,
    torch_api_modules,
    torch_module_timers,
    torch_output,
)

torch = pytest.importorskip("torch")
from fastrnn.torch import _function as torch_function  # noqa: E402

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


# Unsorted, with a sequence of one step and one of all T steps.
TINY_LENGTHS = (2, 5, 1, 4)


def tiny_case_with_lengths(cell: str, num_layers: int, bidirectional: bool) -> Case:
    return Case(cell, steps=5, batch=len(TINY_LENGTHS), input_size=4, hidden_size=5, num_layers=num_layers,
                bidirectional=bidirectional, dtype=np.float32, lengths=TINY_LENGTHS)


def torch_packed(case: Case):
    """torch's packed-path output and input gradient, with the case's weights, input and output gradient."""
    layer, weights, x, grad_output = torch_problem(case)
    x_tensor = torch.tensor(x, requires_grad=True)
    output = torch_output(layer, x_tensor, torch.from_numpy(case.lengths_array))
    output.backward(torch.from_numpy(grad_output))
    return weights, x, grad_output, output.detach().numpy(), x_tensor.grad.numpy()


@pytest.mark.parametrize(("num_layers", "bidirectional"), STACKS)
@pytest.mark.parametrize("cell", CELLS)
def test_onnx_graph_with_sequence_lens_matches_torch_packed(cell, num_layers, bidirectional):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    case = tiny_case_with_lengths(cell, num_layers, bidirectional)
    weights, x, _, expected, _ = torch_packed(case)
    (output,) = ort_session(case, weights).run(["output"], ort_inputs(case, x))
    np.testing.assert_allclose(output, expected, **TOLERANCES)


@pytest.mark.parametrize("module", [fastrnn, reference], ids=["fastrnn", "reference"])
@pytest.mark.parametrize(("num_layers", "bidirectional"), STACKS)
@pytest.mark.parametrize("cell", CELLS)
def test_layers_with_lengths_match_torch_packed(cell, num_layers, bidirectional, module):
    case = tiny_case_with_lengths(cell, num_layers, bidirectional)
    weights, x, grad_output, expected_output, expected_grad_x = torch_packed(case)
    layer = build_layer(module, cell, case.input_size, case.hidden_size, num_layers, bidirectional=bidirectional)
    layer.load_state_dict(weights)
    output, _ = layer(x, lengths=case.lengths_array)
    grad_x, _ = layer.backward(grad_output)
    np.testing.assert_allclose(output, expected_output, **TOLERANCES)
    np.testing.assert_allclose(grad_x, expected_grad_x, **TOLERANCES)


def test_jax_peer_refuses_lengths_rather_than_run_full_length():
    case = tiny_case_with_lengths("lstm", 1, False)
    _, weights, x, grad_output = torch_problem(case)
    with pytest.raises(PeerUnavailable, match="full-length cost"):
        jax_peer(case, weights, x, grad_output)


def training_step_results(timers, module, x_tensor) -> dict[str, np.ndarray]:
    """Run a module's timed training step and keep what it computed: the input's and every
    parameter's gradient."""
    _, training_step = timers
    training_step()
    results = {"x": x_tensor.grad.numpy().copy()}
    results.update({name: param.grad.numpy().copy() for name, param in module.named_parameters()})
    return results


@pytest.mark.parametrize("lengths", [None, TINY_LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_api_modules_compute_the_same_training_step(cell, lengths, monkeypatch):
    # Count fastrnn's kernel calls: fastrnn.torch's module must run them, not fall back to torch's forward.
    kernel_calls = []
    original = torch_function.run_forward

    def counted(*args, **kwargs):
        kernel_calls.append(kwargs["requires_grad"])
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_function, "run_forward", counted)
    case = Case(cell, steps=5, batch=4, input_size=4, hidden_size=5, num_layers=2, bidirectional=True,
                dtype=np.float32, lengths=lengths)
    _, weights, x, _ = torch_problem(case)
    modules = torch_api_modules(case, weights)
    assert list(modules) == list(TORCH_API_MODULES)
    assert type(modules["fastrnn.torch"]).__module__ == "fastrnn.torch"
    x_tensor = torch.from_numpy(x).requires_grad_(True)
    lengths_tensor = None if lengths is None else torch.tensor(lengths)
    results = {}
    for name, module in modules.items():
        timers = torch_module_timers(module, x_tensor, lengths_tensor)
        first = training_step_results(timers, module, x_tensor)
        # A second step recomputes the gradients rather than adding to the first step's.
        second = training_step_results(timers, module, x_tensor)
        for key, value in first.items():
            np.testing.assert_array_equal(second[key], value, err_msg=f"{name} {key}")
        results[name] = first
    # Two training steps of fastrnn.torch's module, each keeping what its backward needs; none of torch.nn's.
    assert kernel_calls == [True, True]
    fast, expected = results["fastrnn.torch"], results["torch.nn"]
    assert fast.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(fast[key], value, err_msg=key, rtol=1e-4, atol=1e-5)
