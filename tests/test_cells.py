"""The cells against torch.nn.RNNCell, LSTMCell and GRUCell with the same weights, for one
call and for a loop of calls differentiated call by call; their parameters, modes, gradient
checks, bad input, and the caller's arrays left alone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.testing import gradcheck

from .conftest import VALUE_TOLERANCES, assert_results_close, random_array

torch = pytest.importorskip("torch")

INPUT_SIZE = 4
HIDDEN_SIZE = 5
BATCH = 3


@dataclass(frozen=True)
class Kind:
    """A cell kind: its class name, the same in fastrnn, fastrnn.reference and torch.nn, and
    the keyword arguments that pick its variant."""

    name: str
    nonlinearity: str | None = None

    def __str__(self) -> str:
        return self.name if self.nonlinearity is None else f"{self.name}-{self.nonlinearity}"

    @property
    def arguments(self) -> dict:
        return {} if self.nonlinearity is None else {"nonlinearity": self.nonlinearity}

    @property
    def state_count(self) -> int:
        return 2 if self.name == "LSTMCell" else 1

    def build(self, module, dtype, bias: bool = True, seed: int | None = 0):
        return getattr(module, self.name)(INPUT_SIZE, HIDDEN_SIZE, bias, **self.arguments, dtype=dtype, seed=seed)


RNN_TANH, RNN_RELU, LSTM, GRU = Kind("RNNCell", "tanh"), Kind("RNNCell", "relu"), Kind("LSTMCell"), Kind("GRUCell")
KINDS = pytest.mark.parametrize("kind", [RNN_TANH, RNN_RELU, LSTM, GRU], ids=str)
SINGLE_STATE_KINDS = pytest.mark.parametrize("kind", [RNN_TANH, GRU], ids=str)
MODULES = pytest.mark.parametrize("module", [fastrnn, reference], ids=["fastrnn", "reference"])
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def torch_dtype(dtype):
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def make_cells(kind: Kind, module, dtype, bias: bool = True, seed: int = 0):
    """``(torch_cell, cell)``: torch's own initialisation copied into ours."""
    torch.manual_seed(seed)
    torch_cell = getattr(torch.nn, kind.name)(
        INPUT_SIZE, HIDDEN_SIZE, bias=bias, **kind.arguments, dtype=torch_dtype(dtype)
    )
    cell = kind.build(module, dtype, bias, seed=None)
    cell.load_state_dict(torch_cell.state_dict())
    return torch_cell, cell


def input_shape(batched: bool) -> tuple[int, ...]:
    return (BATCH, INPUT_SIZE) if batched else (INPUT_SIZE,)


def state_shape(batched: bool) -> tuple[int, ...]:
    return (BATCH, HIDDEN_SIZE) if batched else (HIDDEN_SIZE,)


@dataclass
class Loop:
    """Inputs of T calls, the initial states (None for zeros), and each call's gradient of
    its new states: the loss is the sum over steps of ``sum(h_t * G_t)`` (+ ``sum(c_t * Gc_t)``)."""

    xs: list[np.ndarray]
    initial: tuple
    grads: list[tuple]


def make_loop(kind: Kind, dtype, *, steps: int = 1, batched: bool = True, with_state: bool = True,
              seed: int = 0) -> Loop:
    count = kind.state_count
    return Loop(
        xs=[random_array(input_shape(batched), dtype, seed + t) for t in range(steps)],
        initial=tuple(
            random_array(state_shape(batched), dtype, seed + 100 + i) if with_state else None for i in range(count)
        ),
        grads=[tuple(random_array(state_shape(batched), dtype, seed + 200 + 10 * t + i) for i in range(count))
               for t in range(steps)],
    )


def call(cell, x, states: tuple, **options) -> tuple:
    """One call of ``cell`` from ``states``, as the cell takes them; its new states as a tuple."""
    if isinstance(cell, fastrnn.LSTMCell):
        return cell(x, None if all(state is None for state in states) else states, **options)
    return (cell(x, states[0], **options),)


def differentiate(cell, grads: tuple) -> tuple[np.ndarray, tuple]:
    if isinstance(cell, fastrnn.LSTMCell):
        grad_x, grad_states = cell.backward(grads)
        return grad_x, grad_states
    grad_x, grad_hx = cell.backward(grads[0])
    return grad_x, (grad_hx,)


def _named(new_states: list[tuple], grad_xs: list, grad_initial: tuple, grads: dict) -> dict[str, np.ndarray]:
    """The results of a loop by name: every step's states stacked, as ``h_1`` (and ``c_1``)."""
    results = {"h_1": np.stack([states[0] for states in new_states]), "grad_x": np.stack(grad_xs)}
    if len(grad_initial) == 1:
        results["grad_hx"] = grad_initial[0]
    else:
        results["c_1"] = np.stack([states[1] for states in new_states])
        results["grad_h_0"], results["grad_c_0"] = grad_initial
    results.update(grads)
    return {name: np.array(value) for name, value in results.items()}


def run_cell_loop(cell, loop: Loop) -> dict[str, np.ndarray]:
    """The calls in order, then one backward per call in reverse order, carrying the state gradients."""
    cell.zero_grad()
    states, new_states = loop.initial, []
    for x in loop.xs:
        states = call(cell, x, states)
        new_states.append(states)
    carried = (None,) * len(loop.initial)
    grad_xs = []
    for grads in reversed(loop.grads):
        incoming = tuple(grad if other is None else grad + other for grad, other in zip(grads, carried, strict=True))
        grad_x, carried = differentiate(cell, incoming)
        grad_xs.append(grad_x)
    return _named(new_states, grad_xs[::-1], carried, cell.grads)


def run_torch_loop(torch_cell, loop: Loop) -> dict[str, np.ndarray]:
    """The same loop through torch's autograd; omitted states are explicit zeros, so they have a gradient."""
    xs = [torch.tensor(x, requires_grad=True) for x in loop.xs]
    initial = tuple(
        torch.tensor(np.zeros_like(grad) if value is None else value, requires_grad=True)
        for value, grad in zip(loop.initial, loop.grads[0], strict=True)
    )
    states, new_states, loss = initial, [], 0
    for x, grads in zip(xs, loop.grads, strict=True):
        result = torch_cell(x, states if len(states) == 2 else states[0])
        states = result if isinstance(result, tuple) else (result,)
        new_states.append(tuple(state.detach().numpy() for state in states))
        loss = loss + sum((state * torch.from_numpy(grad)).sum() for state, grad in zip(states, grads, strict=True))
    torch_cell.zero_grad()
    loss.backward()
    grads = {name: param.grad.numpy() for name, param in torch_cell.named_parameters()}
    return _named(new_states, [x.grad.numpy() for x in xs], tuple(state.grad.numpy() for state in initial), grads)


# ---------------------------------------------------------------- parity with torch


@DTYPES
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no_state"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@KINDS
@MODULES
def test_one_call_matches_torch(module, kind, bias, batched, with_state, dtype):
    torch_cell, cell = make_cells(kind, module, dtype, bias)
    loop = make_loop(kind, dtype, batched=batched, with_state=with_state)

    results = run_cell_loop(cell, loop)

    assert results["h_1"].shape == (1, *state_shape(batched))
    assert results["grad_x"].shape == (1, *input_shape(batched))
    assert_results_close(results, run_torch_loop(torch_cell, loop), dtype)


@DTYPES
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no_state"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@KINDS
@MODULES
def test_loop_of_calls_differentiated_in_reverse_matches_torch(module, kind, batched, with_state, dtype):
    torch_cell, cell = make_cells(kind, module, dtype)
    loop = make_loop(kind, dtype, steps=4, batched=batched, with_state=with_state)

    results = run_cell_loop(cell, loop)

    assert_results_close(results, run_torch_loop(torch_cell, loop), dtype)
    with pytest.raises(ValueError, match="backward needs a recorded call"):
        differentiate(cell, loop.grads[0])  # the four backward calls used up the four records


@pytest.mark.parametrize("given", ["h_0", "c_0"])
@MODULES
def test_lstm_with_one_part_of_the_state_given_matches_torch(module, given):
    torch_cell, cell = make_cells(LSTM, module, np.float64)
    loop = make_loop(LSTM, np.float64, steps=2)
    h_0, c_0 = loop.initial
    loop.initial = (h_0, None) if given == "h_0" else (None, c_0)

    assert_results_close(run_cell_loop(cell, loop), run_torch_loop(torch_cell, loop), np.float64)


@pytest.mark.parametrize("missing", ["grad_h_1", "grad_c_1", "both"])
@MODULES
def test_lstm_backward_with_gradient_parts_none_means_zeros(module, missing):
    _, cell = make_cells(LSTM, module, np.float64)
    loop = make_loop(LSTM, np.float64)
    grad_h_1, grad_c_1 = loop.grads[0]
    zeros = np.zeros_like(grad_h_1)
    given, explicit = {
        "grad_h_1": ((None, grad_c_1), (zeros, grad_c_1)),
        "grad_c_1": ((grad_h_1, None), (grad_h_1, zeros)),
        "both": (None, (zeros, zeros)),
    }[missing]

    cell(loop.xs[0], loop.initial)
    cell(loop.xs[0], loop.initial)
    grad_x, grad_state = cell.backward(given)
    expected_x, expected_state = cell.backward(explicit)

    np.testing.assert_array_equal(grad_x, expected_x)
    for actual, expected in zip(grad_state, expected_state, strict=True):
        np.testing.assert_array_equal(actual, expected)
    if missing != "both":
        assert np.abs(grad_x).max() > 0  # the other part still carries a gradient


@SINGLE_STATE_KINDS
@MODULES
def test_backward_of_none_means_a_zero_gradient(module, kind):
    _, cell = make_cells(kind, module, np.float64)
    loop = make_loop(kind, np.float64)

    cell(loop.xs[0], loop.initial[0])
    grad_x, grad_hx = cell.backward(None)

    assert not grad_x.any() and not grad_hx.any()
    assert not any(grad.any() for grad in cell.grads.values())


@DTYPES
@MODULES
def test_loop_over_unbatched_and_stateless_start_matches_torch_with_a_long_loop(module, dtype):
    torch_cell, cell = make_cells(LSTM, module, dtype)
    loop = make_loop(LSTM, dtype, steps=12, batched=False, with_state=False)

    assert_results_close(run_cell_loop(cell, loop), run_torch_loop(torch_cell, loop), dtype)


@KINDS
def test_compiled_and_reference_cells_agree(kind):
    fast, slow = kind.build(fastrnn, np.float64, seed=3), kind.build(reference, np.float64, seed=3)
    loop = make_loop(kind, np.float64, steps=3)

    assert_results_close(run_cell_loop(fast, loop), run_cell_loop(slow, loop), np.float64)


# ---------------------------------------------------------------- modes and records


@KINDS
@MODULES
def test_eval_mode_records_nothing(module, kind):
    _, cell = make_cells(kind, module, np.float64)
    loop = make_loop(kind, np.float64)

    assert cell.eval() is cell and not cell.training
    call(cell, loop.xs[0], loop.initial)
    call(cell, loop.xs[0], loop.initial)

    with pytest.raises(ValueError, match="backward needs a recorded call to differentiate, got none"):
        differentiate(cell, loop.grads[0])


@KINDS
@MODULES
def test_backward_skips_eval_mode_calls_made_after_a_training_call(module, kind):
    _, cell = make_cells(kind, module, np.float64)
    loop = make_loop(kind, np.float64)
    other = make_loop(kind, np.float64, seed=50)
    expected = run_cell_loop(cell, loop)
    cell.zero_grad()

    call(cell, loop.xs[0], loop.initial)
    cell.eval()
    call(cell, other.xs[0], other.initial)
    grad_x, grad_states = differentiate(cell, loop.grads[0])

    np.testing.assert_allclose(grad_x, expected["grad_x"][0], rtol=1e-12, atol=1e-12)
    for name, grad in cell.grads.items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-12, atol=1e-12, err_msg=name)


@KINDS
@MODULES
def test_requires_grad_overrides_the_mode(module, kind):
    _, cell = make_cells(kind, module, np.float64)
    loop = make_loop(kind, np.float64)
    expected = run_cell_loop(cell, loop)

    call(cell, loop.xs[0], loop.initial, requires_grad=False)  # training mode, but not recorded
    with pytest.raises(ValueError, match="backward needs a recorded call"):
        differentiate(cell, loop.grads[0])

    cell.eval()
    cell.zero_grad()
    call(cell, loop.xs[0], loop.initial, requires_grad=True)
    grad_x, _ = differentiate(cell, loop.grads[0])
    np.testing.assert_allclose(grad_x, expected["grad_x"][0], rtol=1e-12, atol=1e-12)


@KINDS
@MODULES
def test_eval_and_training_calls_give_the_same_states(module, kind):
    _, cell = make_cells(kind, module, np.float64)
    loop = make_loop(kind, np.float64)

    trained = call(cell, loop.xs[0], loop.initial)
    cell.eval()
    evaluated = call(cell, loop.xs[0], loop.initial)

    # Inference may take another kernel path than training, summing in another order.
    for value, other in zip(trained, evaluated, strict=True):
        np.testing.assert_allclose(value, other, **VALUE_TOLERANCES["float64"])


@KINDS
@MODULES
def test_gradients_accumulate_in_place_until_zero_grad(module, kind):
    _, cell = make_cells(kind, module, np.float64)
    loop, other = make_loop(kind, np.float64), make_loop(kind, np.float64, seed=60)
    single = {name: value for name, value in run_cell_loop(cell, loop).items() if name in cell.grads}
    other_single = {name: value for name, value in run_cell_loop(cell, other).items() if name in cell.grads}
    buffers = {name: id(grad) for name, grad in cell.grads.items()}
    cell.zero_grad()

    call(cell, loop.xs[0], loop.initial)
    call(cell, other.xs[0], other.initial)
    differentiate(cell, other.grads[0])
    differentiate(cell, loop.grads[0])

    assert {name: id(grad) for name, grad in cell.grads.items()} == buffers
    for name, grad in cell.grads.items():
        np.testing.assert_allclose(grad, single[name] + other_single[name], rtol=1e-12, atol=1e-12, err_msg=name)
    cell.zero_grad()
    assert not any(grad.any() for grad in cell.grads.values())


@KINDS
def test_a_replaced_gradient_array_takes_the_next_backward(kind):
    # As for the layers: the kernels' views of a cell's gradient arrays are kept between
    # calls, and an entry the caller replaced must take the next backward.
    _, cell = make_cells(kind, fastrnn, np.float64)
    loop = make_loop(kind, np.float64)
    call(cell, loop.xs[0], loop.initial)
    differentiate(cell, loop.grads[0])
    once = {name: grad.copy() for name, grad in cell.grads.items()}
    old = cell.grads["weight_hh"]
    cell.grads["weight_hh"] = np.zeros_like(old)

    call(cell, loop.xs[0], loop.initial)
    differentiate(cell, loop.grads[0])

    np.testing.assert_array_equal(old, once["weight_hh"])
    np.testing.assert_allclose(cell.grads["weight_hh"], once["weight_hh"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cell.grads["weight_ih"], 2 * once["weight_ih"], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- gradient checks


GRADCHECK_CASES = [(True, True, True), (True, False, True), (False, True, True), (False, False, False)]


@pytest.mark.parametrize("batched,with_state,bias", GRADCHECK_CASES,
                         ids=["batched-state", "batched-no_state", "unbatched-state", "unbatched-no_state-no_bias"])
@KINDS
@MODULES
def test_gradients_match_central_differences(module, kind, batched, with_state, bias):
    cell = kind.build(module, np.float64, bias, seed=1)
    x = random_array(input_shape(batched), np.float64, 2)
    states = tuple(random_array(state_shape(batched), np.float64, 3 + i) for i in range(kind.state_count))
    hx = (states if kind.state_count == 2 else states[0]) if with_state else None

    report = gradcheck(cell, x, hx)

    state_names = {"h_0", "c_0"} if kind.state_count == 2 else {"hx"}
    assert set(report) == {"input", *state_names, *cell.state_dict()}
    assert all(result.passed for result in report.values())
    with pytest.raises(ValueError, match="backward needs a recorded call"):
        differentiate(cell, (None,) * kind.state_count)  # gradcheck leaves no record behind


def test_gradcheck_catches_a_wrong_cell_gradient():
    class WrongInputGradient(fastrnn.RNNCell):
        def backward(self, grad_h_1):
            grad_x, grad_hx = super().backward(grad_h_1)
            return 1.01 * grad_x, grad_hx

    cell = WrongInputGradient(INPUT_SIZE, HIDDEN_SIZE, dtype=np.float64, seed=0)
    report = gradcheck(cell, random_array(input_shape(True), np.float64, 1), raise_on_failure=False)

    assert not report["input"].passed
    assert all(result.passed for name, result in report.items() if name != "input")


def test_gradcheck_rejects_a_float32_cell():
    with pytest.raises(TypeError, match="float64 cell.*got float32"):
        gradcheck(fastrnn.RNNCell(INPUT_SIZE, HIDDEN_SIZE), random_array(input_shape(True), np.float64, 0))


def test_gradcheck_of_a_cell_takes_no_functional_options():
    cell = fastrnn.RNNCell(INPUT_SIZE, HIDDEN_SIZE, dtype=np.float64)
    with pytest.raises(TypeError, match="cell takes no params or functional options"):
        gradcheck(cell, random_array(input_shape(True), np.float64, 0), batch_first=True)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@KINDS
@MODULES
def test_state_dict_names_order_and_shapes_equal_torch(module, kind, bias):
    torch_state = getattr(torch.nn, kind.name)(INPUT_SIZE, HIDDEN_SIZE, bias=bias, **kind.arguments).state_dict()
    cell = kind.build(module, np.float32, bias)

    state = cell.state_dict()

    expected_names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] if bias else ["weight_ih", "weight_hh"]
    assert list(state) == list(torch_state) == expected_names
    assert list(cell.grads) == expected_names
    assert [name for name, _ in cell.named_parameters()] == expected_names
    assert [id(value) for value in cell.parameters()] == [id(value) for value in state.values()]
    for name, tensor in torch_state.items():
        assert state[name].shape == tuple(tensor.shape), name
        assert state[name].dtype == np.float32 and cell.grads[name].shape == state[name].shape, name
        assert getattr(cell, name) is state[name]


@KINDS
@MODULES
def test_our_state_dict_loads_into_torch(module, kind):
    cell = kind.build(module, np.float64, seed=4)
    torch_cell = getattr(torch.nn, kind.name)(INPUT_SIZE, HIDDEN_SIZE, **kind.arguments, dtype=torch.float64)
    loop = make_loop(kind, np.float64, steps=2)

    torch_cell.load_state_dict({name: torch.from_numpy(value) for name, value in cell.state_dict().items()})

    assert_results_close(run_cell_loop(cell, loop), run_torch_loop(torch_cell, loop), np.float64)


@pytest.mark.parametrize("hidden_size", [1, 6, 100])
@KINDS
def test_initialisation_is_uniform_within_one_over_sqrt_hidden_size(kind, hidden_size):
    cell = getattr(fastrnn, kind.name)(3, hidden_size, **kind.arguments, dtype=np.float64, seed=0)
    bound = 1 / math.sqrt(hidden_size)

    values = np.concatenate([value.ravel() for value in cell.parameters()])

    assert np.abs(values).max() <= bound
    assert values.min() < -0.8 * bound and values.max() > 0.8 * bound


@KINDS
def test_initialisation_follows_the_seed_alike_in_both_modules(kind):
    first = kind.build(fastrnn, np.float32, seed=5).state_dict()
    twin = kind.build(reference, np.float32, seed=5).state_dict()
    other = kind.build(fastrnn, np.float32, seed=6).state_dict()
    for name in first:
        np.testing.assert_array_equal(first[name], twin[name], err_msg=name)
        assert not np.array_equal(first[name], other[name]), name


def test_hyper_parameters_and_repr():
    rnn = fastrnn.RNNCell(4, 5, False, "relu", dtype=np.float64)
    assert (rnn.input_size, rnn.hidden_size, rnn.bias, rnn.nonlinearity, rnn.dtype) == (4, 5, False, "relu", np.float64)
    assert repr(rnn) == "RNNCell(4, 5, bias=False, nonlinearity='relu', dtype=float64)"
    assert repr(fastrnn.LSTMCell(3, 2)) == "LSTMCell(3, 2, dtype=float32)"
    assert repr(reference.GRUCell(3, 2, bias=False)) == "GRUCell(3, 2, bias=False, dtype=float32)"
    assert fastrnn.GRUCell(3, 2).training and fastrnn.GRUCell(3, 2).train(False).training is False


def test_cells_are_exported():
    for name in ["RNNCell", "LSTMCell", "GRUCell"]:
        assert name in fastrnn.__all__ and name in reference.__all__
        assert issubclass(getattr(reference, name), getattr(fastrnn, name))


def test_load_state_dict_refuses_a_layer_state_dict():
    layer_state = reference.LSTM(INPUT_SIZE, HIDDEN_SIZE).state_dict()
    cell = fastrnn.LSTMCell(INPUT_SIZE, HIDDEN_SIZE)
    expected = r"does not match the cell: missing \['weight_ih', 'weight_hh', 'bias_ih', 'bias_hh'\]"
    with pytest.raises(ValueError, match=expected):
        cell.load_state_dict(layer_state)


# ---------------------------------------------------------------- bad input


def float32_array(*shape):
    return random_array(shape, np.float32, 0)


@pytest.mark.parametrize("shape", [(3, 5), (1, 3, 4), (5,), ()], ids=["width", "3d", "1d_width", "scalar"])
@KINDS
@MODULES
def test_input_of_wrong_shape(module, kind, shape):
    cell = kind.build(module, np.float32)
    received = str(shape).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"expected input of shape \(B, 4\) or \(4,\), got {received}"):
        cell(float32_array(*shape))


@KINDS
def test_input_with_no_batch_entries(kind):
    with pytest.raises(ValueError, match=r"at least one batch entry, got shape \(0, 4\)"):
        kind.build(fastrnn, np.float32)(float32_array(0, 4))


@pytest.mark.parametrize(
    "x_shape,hx_shape,expected",
    [
        ((3, 4), (2, 5), r"\(3, 5\)"),
        ((3, 4), (5,), r"\(3, 5\)"),
        ((4,), (1, 5), r"\(5,\)"),
        ((3, 4), (3, 6), r"\(3, 5\)"),
    ],
    ids=["batch", "unbatched_hx_for_batched_input", "batched_hx_for_unbatched_input", "width"],
)
@SINGLE_STATE_KINDS
@MODULES
def test_hx_of_wrong_shape(module, kind, x_shape, hx_shape, expected):
    cell = kind.build(module, np.float32)
    received = str(hx_shape).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"expected hx of shape {expected}, got {received}"):
        cell(float32_array(*x_shape), float32_array(*hx_shape))


@pytest.mark.parametrize("part", ["h_0", "c_0"])
@MODULES
def test_lstm_state_part_of_wrong_shape(module, part):
    cell = LSTM.build(module, np.float32)
    good, bad = float32_array(3, 5), float32_array(3, 4)
    hx = (bad, good) if part == "h_0" else (good, bad)
    with pytest.raises(ValueError, match=rf"expected {part} of shape \(3, 5\), got \(3, 4\)"):
        cell(float32_array(3, 4), hx)


@pytest.mark.parametrize(
    "hx,received",
    [(np.zeros((3, 5), np.float32), "ndarray"), ((np.zeros((3, 5), np.float32),) * 3, "a tuple of length 3"),
     ([np.zeros((3, 5), np.float32)], "a list of length 1")],
    ids=["array", "triple", "single_list"],
)
@MODULES
def test_lstm_hx_that_is_not_a_pair(module, hx, received):
    cell = LSTM.build(module, np.float32)
    with pytest.raises(TypeError, match=rf"expected hx as a tuple \(h_0, c_0\) or None, got {received}$"):
        cell(float32_array(3, 4), hx)


@MODULES
def test_lstm_backward_gradient_that_is_not_a_pair(module):
    cell = LSTM.build(module, np.float32)
    cell(float32_array(3, 4))
    with pytest.raises(TypeError, match=r"expected the gradient of \(h_1, c_1\) as a tuple \(grad_h_1, grad_c_1\)"):
        cell.backward(float32_array(3, 5))
    cell.backward((float32_array(3, 5), None))  # the failed call left the record in place


@KINDS
@MODULES
def test_backward_with_nothing_recorded(module, kind):
    cell = kind.build(module, np.float32)
    with pytest.raises(ValueError, match="backward needs a recorded call to differentiate, got none"):
        differentiate(cell, (float32_array(3, 5),) * kind.state_count)


@KINDS
@MODULES
def test_backward_gradient_of_wrong_shape_keeps_the_record(module, kind):
    _, cell = make_cells(kind, module, np.float64)
    loop = make_loop(kind, np.float64)
    expected = run_cell_loop(cell, loop)
    cell.zero_grad()
    call(cell, loop.xs[0], loop.initial)

    wrong = (random_array((2, HIDDEN_SIZE), np.float64, 0), *loop.grads[0][1:])
    with pytest.raises(ValueError, match=r"expected grad_h_1 of shape \(3, 5\), got \(2, 5\)"):
        differentiate(cell, wrong)
    grad_x, _ = differentiate(cell, loop.grads[0])

    np.testing.assert_allclose(grad_x, expected["grad_x"][0], rtol=1e-12, atol=1e-12)


@MODULES
def test_lstm_grad_c_1_of_wrong_shape(module):
    cell = LSTM.build(module, np.float32)
    cell(float32_array(4))
    with pytest.raises(ValueError, match=r"expected grad_c_1 of shape \(5,\), got \(1, 5\)"):
        cell.backward((None, float32_array(1, 5)))


@pytest.mark.parametrize("argument", ["input", "hx", "grad_h_1"])
@SINGLE_STATE_KINDS
@MODULES
def test_arrays_of_the_wrong_dtype(module, kind, argument):
    cell = kind.build(module, np.float32)
    arrays = {"input": float32_array(3, 4), "hx": float32_array(3, 5), "grad_h_1": float32_array(3, 5)}
    arrays[argument] = arrays[argument].astype(np.float64)
    expected = f"{argument} has dtype float64 but the cell's dtype is float32"
    if argument == "grad_h_1":
        cell(arrays["input"], arrays["hx"])
        with pytest.raises(TypeError, match=expected):
            cell.backward(arrays["grad_h_1"])
    else:
        with pytest.raises(TypeError, match=expected):
            cell(arrays["input"], arrays["hx"])


@MODULES
def test_lstm_c_0_of_the_wrong_dtype(module):
    cell = LSTM.build(module, np.float64)
    with pytest.raises(TypeError, match="c_0 has dtype float32 but the cell's dtype is float64"):
        cell(random_array((3, 4), np.float64, 0), (None, float32_array(3, 5)))


def test_integer_input():
    with pytest.raises(TypeError, match="input must be an array of dtype float32, got dtype int64"):
        fastrnn.GRUCell(4, 5)(np.ones((3, 4), dtype=np.int64))


@pytest.mark.parametrize(
    "arguments,error,message",
    [
        ({"nonlinearity": "gelu"}, ValueError, r"nonlinearity must be one of \['relu', 'tanh'\], got 'gelu'"),
        ({"hidden_size": 0}, ValueError, "hidden_size must be a positive int, got 0"),
        ({"input_size": 2.5}, TypeError, "input_size must be a positive int, got 2.5 of type float"),
        ({"bias": "yes"}, TypeError, "bias must be a bool, got 'yes' of type str"),
        ({"dtype": np.float16}, TypeError, "dtype must be float32 or float64, got float16"),
    ],
    ids=["nonlinearity", "hidden_size", "input_size", "bias", "dtype"],
)
def test_bad_constructor_arguments(arguments, error, message):
    with pytest.raises(error, match=message):
        fastrnn.RNNCell(**{"input_size": 4, "hidden_size": 5, **arguments})


@MODULES
def test_lstm_cell_takes_no_nonlinearity(module):
    with pytest.raises(TypeError, match="nonlinearity"):
        module.LSTMCell(4, 5, nonlinearity="relu")


@KINDS
@MODULES
def test_unusable_gradient_buffer_is_named_by_the_cell(module, kind):
    cell = kind.build(module, np.float32)
    call(cell, float32_array(3, 4), (None,) * kind.state_count)
    cell.grads["weight_hh"] = np.zeros((1,), np.float32)
    with pytest.raises(ValueError, match=r"grads\['weight_hh'\] must be a float32 array of shape"):
        differentiate(cell, (float32_array(3, 5),) * kind.state_count)


# ---------------------------------------------------------------- the caller's arrays


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@KINDS
@MODULES
def test_calls_leave_the_callers_arrays_unchanged_and_unshared(module, kind, batched):
    _, cell = make_cells(kind, module, np.float64)
    loop = make_loop(kind, np.float64, steps=3, batched=batched)
    arrays = [*loop.xs, *loop.initial, *(grad for grads in loop.grads for grad in grads)]
    params = [value.copy() for value in cell.parameters()]
    snapshot = [array.copy() for array in arrays]

    results = run_cell_loop(cell, loop)
    cell.eval()
    evaluated = call(cell, loop.xs[0], loop.initial)

    for array, before in zip(arrays, snapshot, strict=True):
        np.testing.assert_array_equal(array, before)
    for value, before in zip(cell.parameters(), params, strict=True):
        np.testing.assert_array_equal(value, before)
    for result in [*evaluated, *results.values()]:
        assert not any(np.shares_memory(result, array) for array in arrays)


@KINDS
@MODULES
def test_editing_arrays_in_place_after_a_call_leaves_its_gradients_alone(module, kind):
    # A loop that reuses one input buffer, and zeroes h where an episode ends, edits arrays
    # the cell has already taken; the recorded call must not see the edits.
    torch_cell, cell = make_cells(kind, module, np.float64)
    loop = make_loop(kind, np.float64, steps=2)
    expected = run_torch_loop(torch_cell, loop)
    cell.zero_grad()

    buffer = loop.xs[0].copy()
    first = call(cell, buffer, tuple(state.copy() for state in loop.initial))
    buffer[:] = loop.xs[1]
    second = call(cell, buffer, first)
    for state in first:
        state[0] = 0.0
    grad_x_second, carried = differentiate(cell, loop.grads[1])
    incoming = tuple(grad + other for grad, other in zip(loop.grads[0], carried, strict=True))
    grad_x_first, grad_initial = differentiate(cell, incoming)

    np.testing.assert_allclose(second[0], expected["h_1"][1], **VALUE_TOLERANCES["float64"])
    np.testing.assert_allclose(np.stack([grad_x_first, grad_x_second]), expected["grad_x"],
                               **VALUE_TOLERANCES["float64"])
    np.testing.assert_allclose(grad_initial[0], expected["grad_hx" if kind.state_count == 1 else "grad_h_0"],
                               **VALUE_TOLERANCES["float64"])
    for name, grad in cell.grads.items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-10, atol=1e-10, err_msg=name)
