"""Prepared one-layer inference calls (``fastrnn._prepared``): after the first call of a
shape, later ones go straight to the kernel, with the general route's results bit for bit,
its errors for bad input, and every change to the parameters seen."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _prepared, _stack, reference

LAYERS = {
    "rnn_tanh": lambda **options: fastrnn.RNN(3, 5, **options),
    "rnn_relu": lambda **options: fastrnn.RNN(3, 5, nonlinearity="relu", **options),
    "lstm": lambda **options: fastrnn.LSTM(3, 5, **options),
    "lstm_proj": lambda **options: fastrnn.LSTM(3, 5, proj_size=2, **options),
    "gru": lambda **options: fastrnn.GRU(3, 5, **options),
}
EACH_KIND = pytest.mark.parametrize("kind", list(LAYERS))


def make(kind, **options):
    layer = LAYERS[kind](seed=0, **options)
    layer.eval()
    return layer


def general_route(layer, x, hx=None):
    """The call as the general route gives it, with no prepared call to take."""
    layer._params.__dict__.pop("prepared_calls", None)
    output, finals = layer(x, hx)
    layer._params.__dict__.pop("prepared_calls", None)
    return output, finals


def states(finals) -> tuple:
    return finals if isinstance(finals, tuple) else (finals,)


def state_like(layer, batch: int | None, seed: int):
    """Random initial states of the layer's shapes; ``batch`` None for unbatched input."""
    rng = np.random.default_rng(seed)
    stacked = layer.num_layers * (2 if layer.bidirectional else 1)
    sizes = [layer.proj_size or layer.hidden_size, layer.hidden_size] if isinstance(layer, fastrnn.LSTM) else [
        layer.hidden_size]
    made = tuple(
        rng.standard_normal((stacked, size) if batch is None else (stacked, batch, size)).astype(layer.dtype)
        for size in sizes
    )
    return made if len(made) > 1 else made[0]


@pytest.fixture
def general_route_forbidden(monkeypatch):
    """Makes the engine's general forward fail, once called: a call that still works took
    the prepared route."""

    def forbid(*args, **kwargs):
        raise AssertionError("took the general route")

    return lambda: monkeypatch.setattr(_stack, "forward", forbid)


@EACH_KIND
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched", "batch_first_one"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_hx", "hx"])
def test_prepared_calls_give_the_general_routes_bits(kind, layout, bidirectional, with_hx, general_route_forbidden):
    layer = make(kind, bidirectional=bidirectional, batch_first=layout.startswith("batch_first"))
    batch = {"time_major": 4, "batch_first": 4, "unbatched": None, "batch_first_one": 1}[layout]
    rng = np.random.default_rng(1)
    shape = {"time_major": (7, 4, 3), "batch_first": (4, 7, 3), "unbatched": (7, 3), "batch_first_one": (1, 7, 3)}
    inputs = [rng.standard_normal(shape[layout]).astype(np.float32) for _ in range(3)]
    hxs = [state_like(layer, batch, seed) if with_hx else None for seed in range(3)]
    expected = [general_route(layer, x, hx) for x, hx in zip(inputs, hxs, strict=True)]

    layer(inputs[0], hxs[0])  # the first call of the shape prepares
    general_route_forbidden()
    results = [layer(x, hx) for x, hx in zip(inputs, hxs, strict=True)]
    for (output, finals), (expected_output, expected_finals) in zip(results, expected, strict=True):
        assert output.shape == expected_output.shape
        np.testing.assert_array_equal(output, expected_output)
        for final, expected_final in zip(states(finals), states(expected_finals), strict=True):
            assert final.shape == expected_final.shape
            np.testing.assert_array_equal(final, expected_final)
    # Each call returns arrays of its own: the next call did not overwrite the one before.
    assert not np.shares_memory(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][0], expected[0][0])


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_prepared_calls_match_the_reference(kind):
    layer = make(kind)
    oracle = getattr(reference, type(layer).__name__)(3, 5, seed=0)
    oracle.load_state_dict(layer.state_dict())
    oracle.eval()
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.standard_normal((6, 2, 3)).astype(np.float32)
        output, finals = layer(x)
        expected_output, expected_finals = oracle(x)
        np.testing.assert_allclose(output, expected_output, rtol=1e-5, atol=1e-6)
        for final, expected in zip(states(finals), states(expected_finals), strict=True):
            np.testing.assert_allclose(final, expected, rtol=1e-5, atol=1e-6)


@EACH_KIND
def test_changes_to_the_parameters_are_seen(kind):
    layer = make(kind)
    x = np.random.default_rng(3).standard_normal((5, 2, 3)).astype(np.float32)
    layer(x)
    layer(x)
    assert layer._params.__dict__["prepared_calls"].calls

    # In place: the prepared call passes views of the parameters.
    layer.weight_hh_l0 *= 0.5
    changed, _ = layer(x)
    np.testing.assert_array_equal(changed, general_route(layer, x)[0])

    # Assigned to the attribute: copied into the layer's array.
    layer.bias_ih_l0 = layer.bias_ih_l0 + 1.0
    copied, _ = layer(x)
    np.testing.assert_array_equal(copied, general_route(layer, x)[0])
    assert not np.array_equal(copied, changed)

    # Another array in the parameters' place: the prepared call no longer fits, and the
    # general route runs.
    layer._params["weight_ih_l0"] = layer.weight_ih_l0 * 2.0
    assigned, _ = layer(x)
    np.testing.assert_array_equal(assigned, general_route(layer, x)[0])
    assert not np.array_equal(assigned, copied)

    # Loaded weights as well.
    fresh = LAYERS[kind](seed=5)
    layer.load_state_dict(fresh.state_dict())
    fresh.eval()
    np.testing.assert_array_equal(layer(x)[0], fresh(x)[0])


def test_an_assigned_parameter_leaves_the_general_route_to_run(general_route_forbidden):
    layer = make("rnn_tanh")
    x = np.ones((4, 1, 3), np.float32)
    layer(x)
    general_route_forbidden()
    layer(x)
    layer._params["bias_hh_l0"] = layer.bias_hh_l0 + 1.0
    with pytest.raises(AssertionError, match="general route"):
        layer(x)


@pytest.mark.parametrize(
    "bad_call, error, match",
    [
        (lambda layer, x: layer(x.astype(np.float64)), TypeError, "dtype"),
        (lambda layer, x: layer(x[:, :, :2]), ValueError, "input_size=3"),
        (lambda layer, x: layer(x, np.zeros((1, 2, 5), np.float64)), TypeError, "dtype"),
        (lambda layer, x: layer(x, np.zeros((1, 3, 5), np.float32)), ValueError, "hx of shape"),
        (lambda layer, x: layer(x, [[0.0] * 5] * 2), TypeError, "hx has dtype float64"),
        (lambda layer, x: layer(x.tolist() + [[[0.0]]]), TypeError, "input"),
    ],
    ids=["x_dtype", "x_width", "hx_dtype", "hx_shape", "hx_list", "x_ragged"],
)
def test_bad_input_after_preparing_gets_the_general_routes_errors(bad_call, error, match):
    layer = make("rnn_tanh")
    x = np.random.default_rng(4).standard_normal((6, 2, 3)).astype(np.float32)
    layer(x)
    layer(x, np.zeros((1, 2, 5), np.float32))
    with pytest.raises(error, match=match):
        bad_call(layer, x)


def test_array_likes_and_views_take_the_route_that_fits():
    layer = make("gru")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    expected, _ = general_route(layer, x)
    layer(x)
    np.testing.assert_array_equal(layer(memoryview(x))[0], expected)  # not an ndarray: the general route
    wide = np.empty((6, 2, 6), np.float32)
    wide[:, :, ::2] = x
    np.testing.assert_array_equal(layer(wide[:, :, ::2])[0], expected)  # not contiguous: copied
    readonly = x.copy()
    readonly.flags.writeable = False
    np.testing.assert_array_equal(layer(readonly)[0], expected)


@EACH_KIND
def test_the_callers_arrays_are_not_changed(kind):
    layer = make(kind)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3, 3)).astype(np.float32)
    hx = state_like(layer, 3, 7)
    layer(x, hx)
    x_before, hx_before = x.copy(), tuple(state.copy() for state in states(hx))
    for _ in range(2):
        layer(x, hx)
        layer(x)
    np.testing.assert_array_equal(x, x_before)
    for state, before in zip(states(hx), hx_before, strict=True):
        np.testing.assert_array_equal(state, before)


@EACH_KIND
def test_the_zero_states_a_prepared_call_keeps_stay_zero(kind):
    # A call without hx reads the prepared call's zeros; a call with hx between must not
    # have written them, nor may the kernel.
    layer = make(kind)
    x = np.random.default_rng(8).standard_normal((4, 2, 3)).astype(np.float32)
    expected, _ = general_route(layer, x)
    for _ in range(3):
        layer(x, state_like(layer, 2, 9))
        np.testing.assert_array_equal(layer(x)[0], expected)


def test_training_calls_and_lengths_take_the_general_route(general_route_forbidden):
    layer = make("lstm")
    x = np.random.default_rng(10).standard_normal((4, 2, 3)).astype(np.float32)
    layer(x)
    general_route_forbidden()
    layer(x)
    with pytest.raises(AssertionError, match="general route"):
        layer(x, requires_grad=True)
    with pytest.raises(AssertionError, match="general route"):
        layer(x, lengths=[4, 3])


def test_stacks_and_large_calls_are_not_prepared():
    stack = fastrnn.GRU(3, 5, num_layers=2, seed=0).eval()
    stack(np.ones((4, 2, 3), np.float32))
    assert "prepared_calls" not in stack._params.__dict__
    large = fastrnn.LSTM(64, 128, seed=0).eval()  # 100 * 8 * 4 * 128 * 128 multiply-adds: the threads may share it
    large(np.ones((100, 8, 64), np.float32))
    assert "prepared_calls" not in large._params.__dict__


def test_parameters_the_kernels_would_copy_are_not_prepared():
    layer = make("rnn_tanh")
    wide = np.zeros((5, 10), np.float32)
    wide[:, ::2] = layer.weight_hh_l0
    layer._params["weight_hh_l0"] = wide[:, ::2]  # a strided view, set past the layer's checks
    x = np.ones((4, 1, 3), np.float32)
    expected, _ = general_route(layer, x)
    layer(x)
    assert "prepared_calls" not in layer._params.__dict__
    wide[:, ::2] *= 2.0  # seen by the general route, which copies the view again each call
    assert not np.array_equal(layer(x)[0], expected)


def test_threads_get_prepared_calls_of_their_own():
    layer = make("lstm")
    rng = np.random.default_rng(11)
    inputs = [rng.standard_normal((9, 2, 3)).astype(np.float32) for _ in range(4)]
    expected = [general_route(layer, x)[0] for x in inputs]
    failures = []
    start = threading.Barrier(len(inputs))

    def work(index):
        start.wait()
        for _ in range(200):
            output, _ = layer(inputs[index])
            if not np.array_equal(output, expected[index]):
                failures.append(index)
                return

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert isinstance(layer._params.__dict__["prepared_calls"], _prepared._PerThread)


def test_cells_step_through_prepared_calls(general_route_forbidden, monkeypatch):
    cell = fastrnn.LSTMCell(3, 5, seed=0)
    cell.eval()
    rng = np.random.default_rng(12)
    inputs = [rng.standard_normal((2, 3)).astype(np.float32) for _ in range(4)]
    expected = []
    state = None
    with monkeypatch.context() as general_only:
        general_only.setattr(_prepared, "run", lambda *args: None)
        for x in inputs:
            state = cell(x, state)
            expected.append(state)
    cell(inputs[0])
    cell(inputs[0], expected[0])
    general_route_forbidden()
    state = None
    for x, wanted in zip(inputs, expected, strict=True):
        state = cell(x, state)
        for value, wanted_value in zip(state, wanted, strict=True):
            np.testing.assert_array_equal(value, wanted_value)


def test_a_full_thread_count_of_one_holds_blas_to_one_thread(monkeypatch):
    layer = make("gru")
    x = np.ones((4, 2, 3), np.float32)
    layer(x)
    held = []
    real = _prepared.blas_single_threaded

    def recording():
        held.append(1)
        return real()

    monkeypatch.setattr(_prepared, "blas_single_threaded", recording)
    fastrnn.set_num_threads(1)
    try:
        layer(x)
    finally:
        fastrnn.set_num_threads(numba_threads())
    assert held


def numba_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


# ---------------------------------------------------------------- training


def training_step(layer, x, hx, grad_output, grad_state):
    """Forward and backward, with the layer's gradients zeroed first: every result, by name."""
    layer.zero_grad()
    output, finals = layer(x, hx, requires_grad=True)
    grad_x, grad_hx = layer.backward(grad_output, grad_state)
    results = {"output": np.array(output), "grad_x": grad_x}
    results.update({f"final_{i}": value for i, value in enumerate(states(finals))})
    results.update({f"grad_hx_{i}": value for i, value in enumerate(states(grad_hx))})
    results.update({f"grad_{name}": value.copy() for name, value in layer.grads.items()})
    return results


@pytest.fixture
def general_route_only(monkeypatch):
    """Runs a block on the general route only, forward and backward."""

    def block():
        context = monkeypatch.context()
        patch = context.__enter__()
        patch.setattr(_prepared, "run", lambda *args: None)
        patch.setattr(_prepared, "run_backward", lambda *args: None)
        return context

    return block


@pytest.fixture
def general_backward_forbidden(monkeypatch):
    def forbid(*args, **kwargs):
        raise AssertionError("took the general route")

    return lambda: monkeypatch.setattr(_stack, "backward", forbid)


@EACH_KIND
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_states", [False, True], ids=["zero_states", "states"])
def test_prepared_training_steps_give_the_general_routes_bits(
    kind, layout, bidirectional, with_states, general_route_only, general_route_forbidden,
    general_backward_forbidden,
):
    layer = make(kind, bidirectional=bidirectional, batch_first=layout == "batch_first")
    layer.train()
    batch = None if layout == "unbatched" else 3
    shape = {"time_major": (6, 3, 3), "batch_first": (3, 6, 3), "unbatched": (6, 3)}[layout]
    width = (2 if bidirectional else 1) * (layer.proj_size if kind == "lstm_proj" else 5)
    rng = np.random.default_rng(20)
    steps = []
    for seed in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        grad_output = rng.standard_normal((*shape[:-1], width)).astype(np.float32)
        hx = state_like(layer, batch, 30 + seed) if with_states else None
        grad_state = state_like(layer, batch, 40 + seed) if with_states else None
        steps.append((x, hx, grad_output, grad_state))
    context = general_route_only()
    expected = [training_step(layer, *step) for step in steps]
    context.__exit__(None, None, None)

    training_step(layer, *steps[0])  # prepares the forward and its backward
    general_route_forbidden()
    general_backward_forbidden()
    for step, wanted in zip(steps, expected, strict=True):
        results = training_step(layer, *step)
        assert results.keys() == wanted.keys()
        for name, value in results.items():
            assert value.shape == wanted[name].shape, name
            np.testing.assert_array_equal(value, wanted[name], err_msg=name)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_prepared_training_steps_match_torch_and_accumulate(kind):
    torch = pytest.importorskip("torch")
    layer = make(kind)
    layer.train()
    module = getattr(torch.nn, type(layer).__name__)(3, 5)
    with torch.no_grad():
        for name, value in layer.state_dict().items():
            getattr(module, name).copy_(torch.from_numpy(value))
    rng = np.random.default_rng(21)
    x = rng.standard_normal((7, 2, 3)).astype(np.float32)
    grad_output = rng.standard_normal((7, 2, 5)).astype(np.float32)
    layer.zero_grad()
    for _ in range(3):  # the first call prepares; the gradients add up over the three
        output, _ = layer(x)
        grad_x, _ = layer.backward(grad_output)
    x_tensor = torch.from_numpy(x).requires_grad_()
    torch_output, _ = module(x_tensor)
    (torch_output * torch.from_numpy(grad_output)).sum().backward()
    np.testing.assert_allclose(output, torch_output.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_x, x_tensor.grad.numpy(), rtol=1e-4, atol=1e-5)
    for name, value in layer.grads.items():
        np.testing.assert_allclose(value, 3 * getattr(module, name).grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_backward_on_another_thread_or_after_a_change_takes_the_general_route(general_route_only):
    layer = make("gru")
    layer.train()
    rng = np.random.default_rng(22)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    grad_output = rng.standard_normal((5, 2, 5)).astype(np.float32)
    context = general_route_only()
    expected = training_step(layer, x, None, grad_output, None)
    context.__exit__(None, None, None)
    training_step(layer, x, None, grad_output, None)
    training_step(layer, x, None, grad_output, None)

    layer.zero_grad()
    layer(x)
    results = []
    thread = threading.Thread(target=lambda: results.append(layer.backward(grad_output)))
    thread.start()
    thread.join()
    np.testing.assert_array_equal(results[0][0], expected["grad_x"])
    np.testing.assert_array_equal(layer.grads["weight_hh_l0"], expected["grad_weight_hh_l0"])

    # A gradient buffer replaced between calls takes the next backward's gradients.
    layer.zero_grad()
    layer(x)
    replaced = np.zeros_like(layer.grads["weight_ih_l0"])
    layer.grads["weight_ih_l0"] = replaced
    layer.backward(grad_output)
    np.testing.assert_array_equal(replaced, expected["grad_weight_ih_l0"])

    # Parameters changed between forward and backward: the general route's backward, which
    # reads the parameters as they are then.
    original = layer.weight_hh_l0
    layer(x)
    layer._params["weight_hh_l0"] = original * 0.5
    grad_x, _ = layer.backward(grad_output)
    layer._params["weight_hh_l0"] = original
    context = general_route_only()
    layer(x, requires_grad=True)
    layer._params["weight_hh_l0"] = original * 0.5
    grad_x_again, _ = layer.backward(grad_output)
    context.__exit__(None, None, None)
    np.testing.assert_array_equal(grad_x, grad_x_again)


def test_a_record_can_be_differentiated_twice(general_backward_forbidden):
    layer = make("lstm")
    rng = np.random.default_rng(23)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    grad_output = rng.standard_normal((5, 2, 5)).astype(np.float32)
    for _ in range(2):
        layer(x, requires_grad=True)
        layer.backward(grad_output)
    general_backward_forbidden()
    layer.zero_grad()
    layer(x, requires_grad=True)
    first, _ = layer.backward(grad_output)
    once = {name: value.copy() for name, value in layer.grads.items()}
    second, _ = layer.backward(grad_output)
    np.testing.assert_array_equal(first, second)
    for name, value in layer.grads.items():  # the second adds to the first, rounding as it goes
        np.testing.assert_allclose(value, 2 * once[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize(
    "bad_call, error, match",
    [
        (lambda layer, g: layer.backward(g[:, :, :2]), ValueError, "grad_output of shape"),
        (lambda layer, g: layer.backward(g.astype(np.float64)), TypeError, "dtype"),
        (lambda layer, g: layer.backward(g, np.zeros((1, 3, 5), np.float32)), ValueError, "of shape"),
    ],
    ids=["grad_shape", "grad_dtype", "grad_state_shape"],
)
def test_bad_gradients_after_preparing_get_the_general_routes_errors(bad_call, error, match):
    layer = make("rnn_tanh")
    layer.train()
    x = np.ones((4, 2, 3), np.float32)
    grad_output = np.ones((4, 2, 5), np.float32)
    for _ in range(2):
        layer(x)
        layer.backward(grad_output)
    layer(x)
    with pytest.raises(error, match=match):
        bad_call(layer, grad_output)
    before = grad_output.copy()
    layer.backward(grad_output)
    np.testing.assert_array_equal(grad_output, before)  # consumed as a copy, never in place


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_fastrnn_torch_steps_take_prepared_backwards_with_fresh_gradients(kind, general_backward_forbidden):
    torch = pytest.importorskip("torch")
    import fastrnn.torch as fastrnn_torch

    name = {"rnn_tanh": "RNN", "lstm": "LSTM", "gru": "GRU"}[kind]
    torch.manual_seed(0)
    module = getattr(fastrnn_torch, name)(3, 5)
    twin = getattr(torch.nn, name)(3, 5)
    twin.load_state_dict(module.state_dict())
    rng = np.random.default_rng(24)
    x = torch.from_numpy(rng.standard_normal((6, 2, 3)).astype(np.float32))
    weights = torch.from_numpy(rng.standard_normal((6, 2, 5)).astype(np.float32))

    def step(network):
        network.zero_grad()
        inputs = x.clone().requires_grad_()
        output, _ = network(inputs)
        (output * weights).sum().backward()
        return [inputs.grad.clone()] + [parameter.grad.clone() for parameter in network.parameters()]

    expected = step(twin)
    step(module)
    step(module)  # the first backward took the general route and prepared; this one is prepared
    general_backward_forbidden()
    for _ in range(2):  # each call's gradients are fresh: nothing carries over from the call before
        for value, wanted in zip(step(module), expected, strict=True):
            np.testing.assert_allclose(value.numpy(), wanted.numpy(), rtol=1e-4, atol=1e-5)
