"""fastrnn.LSTM and fastrnn.GRU, and their NumPy twins, against torch.nn.LSTM and torch.nn.GRU
with the same weights; gradient checks, dropout under a fixed mask, random shapes, bad
input, the functional API, and the caller's arrays left alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import reference
from fastrnn.testing import gradcheck

from .conftest import (
    VALUE_TOLERANCES,
    GRUConfig,
    LSTMConfig,
    assert_results_close,
    make_layers,
    make_problem,
    make_torch_layers,
    random_array,
    run_layer,
    run_torch,
)

torch = pytest.importorskip("torch")

MODULES = pytest.mark.parametrize("module", [fastrnn, reference], ids=["fastrnn", "reference"])
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])

# Five flags per case: bidirectional, bias, batch_first, with_hx, batched. Rather than all
# 32 combinations: in these 8 rows every two flags take all four value pairs ...
PAIRWISE_FLAGS = [(a, b, c, a != b, a != c) for a, b, c in itertools.product([False, True], repeat=3)]
# ... and in these 16 (the combinations with an even number of flags set) every four
# flags take all 16 value combinations.
FOURWISE_FLAGS = [flags for flags in itertools.product([False, True], repeat=5) if sum(flags) % 2 == 0]


def flags_id(flags) -> str:
    bidirectional, bias, batch_first, with_hx, batched = flags
    return "-".join([
        "bi" if bidirectional else "uni",
        "bias" if bias else "no_bias",
        "batch_first" if batch_first else "time_major",
        "hx" if with_hx else "no_hx",
        "batched" if batched else "unbatched",
    ])


def layer_of(module, config, dtype, **options):
    return getattr(module, config.layer_name)(**vars(config), dtype=dtype, **options)


def chosen(module, fast, slow):
    return fast if module is fastrnn else slow


# ---------------------------------------------------------------- parity with torch


@pytest.mark.parametrize("flags", PAIRWISE_FLAGS, ids=flags_id)
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("proj_size", [0, 1, 3], ids=lambda p: f"proj{p}")
@DTYPES
@MODULES
def test_lstm_matches_torch(module, dtype, proj_size, num_layers, flags):
    bidirectional, bias, batch_first, with_hx, batched = flags
    config = LSTMConfig(
        num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, proj_size=proj_size
    )
    torch_lstm, fast, slow = make_torch_layers(config, dtype)
    problem = make_problem(config, dtype, batched=batched, with_hx=with_hx)

    results = run_layer(chosen(module, fast, slow), problem)

    assert results["h_n"].shape == config.state_shapes(3, batched)[0]
    assert results["c_n"].shape == config.state_shapes(3, batched)[1]
    assert_results_close(results, run_torch(torch_lstm, problem), dtype)


@pytest.mark.parametrize("flags", FOURWISE_FLAGS, ids=flags_id)
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda n: f"L{n}")
@DTYPES
@MODULES
def test_gru_matches_torch(module, dtype, num_layers, flags):
    bidirectional, bias, batch_first, with_hx, batched = flags
    config = GRUConfig(num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    torch_gru, fast, slow = make_torch_layers(config, dtype)
    problem = make_problem(config, dtype, batched=batched, with_hx=with_hx)

    assert_results_close(run_layer(chosen(module, fast, slow), problem), run_torch(torch_gru, problem), dtype)


# Batch and hidden sizes past the few-row step products, into BLAS-sized ones.
LARGER_CONFIGS = [
    LSTMConfig(input_size=8, hidden_size=72, num_layers=2, proj_size=36),
    LSTMConfig(input_size=8, hidden_size=72, bidirectional=True),
    GRUConfig(input_size=8, hidden_size=72, num_layers=2, bidirectional=True),
]


@DTYPES
@pytest.mark.parametrize("config", LARGER_CONFIGS, ids=str)
@MODULES
def test_larger_layers_match_torch(module, config, dtype):
    torch_layer, fast, slow = make_torch_layers(config, dtype)
    problem = make_problem(config, dtype, steps=4, batch=16)

    assert_results_close(run_layer(chosen(module, fast, slow), problem), run_torch(torch_layer, problem), dtype)


@pytest.mark.parametrize("given", ["h_0", "c_0"])
@pytest.mark.parametrize("proj_size", [0, 2], ids=lambda p: f"proj{p}")
@MODULES
def test_lstm_with_one_part_of_hx_given_matches_torch(module, proj_size, given):
    config = LSTMConfig(num_layers=2, bidirectional=True, proj_size=proj_size)
    torch_lstm, fast, slow = make_torch_layers(config, np.float64)
    problem = make_problem(config, np.float64)
    h_0, c_0 = problem.hx
    problem.hx = (h_0, None) if given == "h_0" else (None, c_0)

    assert_results_close(run_layer(chosen(module, fast, slow), problem), run_torch(torch_lstm, problem), np.float64)


@pytest.mark.parametrize("missing", ["grad_h_n", "grad_c_n", "both"])
@MODULES
def test_lstm_backward_with_final_state_gradients_none_means_zeros(module, missing):
    config = LSTMConfig(num_layers=2, proj_size=2)
    layer = layer_of(module, config, np.float64, seed=0)
    problem = make_problem(config, np.float64)
    grad_h_n, grad_c_n = problem.grad_h_n
    given, explicit = {
        "grad_h_n": ((None, grad_c_n), (np.zeros_like(grad_h_n), grad_c_n)),
        "grad_c_n": ((grad_h_n, None), (grad_h_n, np.zeros_like(grad_c_n))),
        "both": (None, (np.zeros_like(grad_h_n), np.zeros_like(grad_c_n))),
    }[missing]

    layer(problem.x, problem.hx)
    grad_x, (grad_h_0, grad_c_0) = layer.backward(problem.grad_output, given)
    layer(problem.x, problem.hx)
    expected_x, (expected_h_0, expected_c_0) = layer.backward(problem.grad_output, explicit)

    np.testing.assert_array_equal(grad_x, expected_x)
    np.testing.assert_array_equal(grad_h_0, expected_h_0)
    np.testing.assert_array_equal(grad_c_0, expected_c_0)


REPEATED_BACKWARD_CONFIGS = [LSTMConfig(), LSTMConfig(num_layers=2, proj_size=2), GRUConfig(bidirectional=True)]


@pytest.mark.parametrize("config", REPEATED_BACKWARD_CONFIGS, ids=str)
@MODULES
def test_backward_twice_from_one_forward_gives_the_same_gradients(module, config):
    # As for RNN: backward differentiates the most recent forward, however often it is called.
    layer = layer_of(module, config, np.float64, seed=0)
    problem = make_problem(config, np.float64)
    layer(problem.x, problem.hx)

    grad_x, grad_initials = layer.backward(problem.grad_output, problem.grad_h_n)
    first_grads = {name: grad.copy() for name, grad in layer.grads.items()}
    again_x, again_initials = layer.backward(problem.grad_output, problem.grad_h_n)

    np.testing.assert_array_equal(again_x, grad_x)
    for again, first in zip(_as_tuple(again_initials), _as_tuple(grad_initials), strict=True):
        np.testing.assert_array_equal(again, first)
    for name, grad in layer.grads.items():
        np.testing.assert_allclose(grad, 2 * first_grads[name], rtol=1e-12, atol=1e-12, err_msg=name)


INFERENCE_CONFIGS = [
    LSTMConfig(num_layers=2),
    LSTMConfig(num_layers=3, proj_size=3, batch_first=True),
    LSTMConfig(num_layers=2, bidirectional=True, proj_size=2),
    GRUConfig(num_layers=2),
    GRUConfig(num_layers=3, bias=False, batch_first=True),
]


@DTYPES
@pytest.mark.parametrize("steps", [1, 65, 150])
@pytest.mark.parametrize("config", INFERENCE_CONFIGS, ids=str)
def test_inference_forward_equals_training_forward_and_reference(config, steps, dtype):
    # Unidirectional stacks without gradients advance all layers chunk by chunk (64 steps),
    # another code path from the training forward; 150 steps runs three chunks.
    fast, slow = make_layers(config, dtype)
    problem = make_problem(config, dtype, steps=steps)
    tolerances = VALUE_TOLERANCES[np.dtype(dtype).name]

    trained_output, trained_finals = fast(problem.x, problem.hx)
    fast.eval()
    eval_output, eval_finals = fast(problem.x, problem.hx)
    expected_output, expected_finals = slow(problem.x, problem.hx, requires_grad=False)

    for output in (trained_output, eval_output):
        np.testing.assert_allclose(output, expected_output, **tolerances)
    for finals in (trained_finals, eval_finals):
        for actual, expected in zip(_as_tuple(finals), _as_tuple(expected_finals), strict=True):
            np.testing.assert_allclose(actual, expected, **tolerances)


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def test_long_sequence_gradients_match_torch():
    config = LSTMConfig(num_layers=2, bidirectional=True, proj_size=3)
    torch_lstm, fast, _ = make_torch_layers(config, np.float64)
    problem = make_problem(config, np.float64, steps=150, batch=2)

    assert_results_close(run_layer(fast, problem), run_torch(torch_lstm, problem), np.float64)


# ---------------------------------------------------------------- gradient checks


GRADCHECK_CASES = [
    (LSTMConfig(input_size=3, hidden_size=4), True, True),
    (LSTMConfig(input_size=3, hidden_size=4, proj_size=2), True, False),
    (LSTMConfig(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=1), True, True),
    (LSTMConfig(input_size=3, hidden_size=4, num_layers=2, bias=False, batch_first=True), False, True),
    (GRUConfig(input_size=3, hidden_size=4), True, True),
    (GRUConfig(input_size=3, hidden_size=4, num_layers=2, bidirectional=True), True, False),
    (GRUConfig(input_size=3, hidden_size=4, num_layers=2, bias=False, batch_first=True), False, True),
]


@pytest.mark.parametrize("config,batched,with_hx", GRADCHECK_CASES, ids=str)
@MODULES
def test_gradients_match_central_differences(module, config, batched, with_hx):
    layer = layer_of(module, config, np.float64, seed=1)
    x = random_array(config.input_shape(4, 2, batched), np.float64, 2)
    states = tuple(random_array(shape, np.float64, 3 + i) for i, shape in enumerate(config.state_shapes(2, batched)))
    hx = (states if len(states) == 2 else states[0]) if with_hx else None

    report = gradcheck(layer, x, hx)

    state_names = {"h_0", "c_0"} if len(states) == 2 else {"hx"}
    assert set(report) == {"input", *state_names, *layer.state_dict()}
    assert all(result.passed for result in report.values())


DROPOUT_CONFIGS = [
    LSTMConfig(input_size=3, hidden_size=4, num_layers=2, dropout=0.5),
    LSTMConfig(input_size=3, hidden_size=4, num_layers=3, dropout=0.3, bidirectional=True, proj_size=2),
    GRUConfig(input_size=3, hidden_size=4, num_layers=2, dropout=0.4, batch_first=True, bias=False),
]


@pytest.mark.parametrize("config", DROPOUT_CONFIGS, ids=str)
@MODULES
def test_gradients_under_a_fixed_dropout_mask_match_central_differences(module, config):
    layer = layer_of(module, config, np.float64, seed=7)
    x = random_array(config.input_shape(4, 2), np.float64, 8)
    undropped = layer_of(reference, config, np.float64).eval()
    undropped.load_state_dict(layer.state_dict())

    report = gradcheck(layer, x)

    assert all(result.passed for result in report.values())
    # The mask was applied: in training mode the output differs from the undropped one.
    output, _ = layer(x, requires_grad=False)
    undropped_output, _ = undropped(x)
    assert not np.allclose(output, undropped_output)


@DTYPES
@pytest.mark.parametrize("config", DROPOUT_CONFIGS, ids=str)
def test_fastrnn_and_reference_drop_the_same_units(config, dtype):
    fast, slow = make_layers(config, dtype, seed=11)
    problem = make_problem(config, dtype)

    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), dtype)
    # The generators advanced identically, so the next masks match too.
    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), dtype)


# ---------------------------------------------------------------- random shapes


@st.composite
def lstm_configs(draw):
    hidden_size = draw(st.integers(1, 5))
    return LSTMConfig(
        input_size=draw(st.integers(1, 4)),
        hidden_size=hidden_size,
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        proj_size=draw(st.sampled_from([0, 1])) if hidden_size > 1 else 0,
    )


gru_configs = st.builds(
    GRUConfig, input_size=st.integers(1, 4), hidden_size=st.integers(1, 5), num_layers=st.integers(1, 3),
    bias=st.booleans(), batch_first=st.booleans(), bidirectional=st.booleans(),
)
SHAPES = {"steps": st.integers(1, 6), "batch": st.integers(1, 3), "batched": st.booleans(),
          "with_hx": st.booleans(), "seed": st.integers(0, 2**32 - 1)}


@settings(max_examples=10)
@given(config=lstm_configs(), **SHAPES)
@example(config=LSTMConfig(input_size=1, hidden_size=1), steps=1, batch=1, batched=True, with_hx=True, seed=0)
@example(config=LSTMConfig(input_size=1, hidden_size=2, proj_size=1), steps=1, batch=1, batched=False,
         with_hx=False, seed=0)
@example(config=LSTMConfig(input_size=1, hidden_size=2, num_layers=3, bidirectional=True, proj_size=1), steps=1,
         batch=1, batched=True, with_hx=True, seed=0)
def test_lstm_matches_reference_over_random_shapes(config, steps, batch, batched, with_hx, seed):
    fast, slow = make_layers(config, np.float64, seed=seed)
    problem = make_problem(config, np.float64, steps=steps, batch=batch, batched=batched, with_hx=with_hx, seed=seed)

    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float64)


@settings(max_examples=10)
@given(config=gru_configs, **SHAPES)
@example(config=GRUConfig(input_size=1, hidden_size=1), steps=1, batch=1, batched=True, with_hx=True, seed=0)
@example(config=GRUConfig(input_size=1, hidden_size=1, num_layers=3, bidirectional=True), steps=1, batch=1,
         batched=False, with_hx=False, seed=0)
def test_gru_matches_reference_over_random_shapes(config, steps, batch, batched, with_hx, seed):
    fast, slow = make_layers(config, np.float64, seed=seed)
    problem = make_problem(config, np.float64, steps=steps, batch=batch, batched=batched, with_hx=with_hx, seed=seed)

    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float64)


# ---------------------------------------------------------------- bad input


def float32_input(*shape):
    return random_array(shape, np.float32, 0)


@MODULES
def test_lstm_hx_that_is_not_a_pair(module):
    layer = module.LSTM(4, 6, seed=0)
    with pytest.raises(TypeError, match=r"expected hx as a tuple \(h_0, c_0\) or None, got ndarray"):
        layer(float32_input(5, 3, 4), float32_input(1, 3, 6))
    with pytest.raises(TypeError, match=r"expected hx as a tuple \(h_0, c_0\) or None, got tuple"):
        layer(float32_input(5, 3, 4), (float32_input(1, 3, 6),) * 3)


@pytest.mark.parametrize(
    "proj_size,h_shape,c_shape,message",
    [
        (0, (1, 3, 6), (1, 3, 5), r"expected c_0 of shape \(1, 3, 6\), got \(1, 3, 5\)"),
        (0, (1, 3, 6), (2, 3, 6), r"expected c_0 of shape \(1, 3, 6\), got \(2, 3, 6\)"),
        (2, (1, 3, 2), (1, 3, 2), r"expected c_0 of shape \(1, 3, 6\), got \(1, 3, 2\)"),
        (2, (1, 3, 6), (1, 3, 6), r"expected h_0 of shape \(1, 3, 2\), got \(1, 3, 6\)"),
    ],
    ids=["c_width", "c_layers", "c_as_wide_as_the_projection", "h_as_wide_as_the_cell"],
)
@MODULES
def test_lstm_state_of_wrong_shape(module, proj_size, h_shape, c_shape, message):
    layer = module.LSTM(4, 6, proj_size=proj_size, seed=0)
    with pytest.raises(ValueError, match=message):
        layer(float32_input(5, 3, 4), (float32_input(*h_shape), float32_input(*c_shape)))


@MODULES
def test_lstm_backward_gradients_of_wrong_shape_or_kind(module):
    layer = module.LSTM(4, 6, proj_size=2, seed=0)
    layer(float32_input(5, 3, 4))
    with pytest.raises(ValueError, match=r"expected grad_c_n of shape \(1, 3, 6\) \(c_n's\), got \(1, 3, 2\)"):
        layer.backward(float32_input(5, 3, 2), (None, float32_input(1, 3, 2)))
    with pytest.raises(TypeError, match=r"as a tuple \(grad_h_n, grad_c_n\) or None, got ndarray"):
        layer.backward(float32_input(5, 3, 2), float32_input(1, 3, 2))


@pytest.mark.parametrize(
    "proj_size,error,message",
    [
        (-1, ValueError, "proj_size should be a positive integer or zero to disable projections, got -1"),
        (6, ValueError, r"proj_size has to be smaller than hidden_size \(6\), got 6"),
        (7, ValueError, r"proj_size has to be smaller than hidden_size \(6\), got 7"),
        (2.0, TypeError, "proj_size must be an int, got 2.0 of type float"),
    ],
    ids=["negative", "equal", "larger", "float"],
)
@MODULES
def test_proj_size_out_of_range(module, proj_size, error, message):
    with pytest.raises(error, match=message):
        module.LSTM(4, 6, proj_size=proj_size)


@MODULES
def test_gru_takes_no_proj_size(module):
    with pytest.raises(TypeError, match="proj_size"):
        module.GRU(4, 6, proj_size=2)


@pytest.mark.parametrize("layer_name", ["LSTM", "GRU"])
@MODULES
def test_gated_layers_take_no_nonlinearity(module, layer_name):
    with pytest.raises(TypeError, match="nonlinearity"):
        getattr(module, layer_name)(4, 6, nonlinearity="relu")


@pytest.mark.parametrize("module", [fastrnn.functional, reference], ids=["fastrnn", "reference"])
def test_functional_gru_refuses_a_projection(module):
    params = {**reference.GRU(4, 6).state_dict(), "weight_hr_l0": np.zeros((2, 6), np.float32)}
    with pytest.raises(ValueError, match="'weight_hr_l0', a projection, which this cell \\(gru\\) does not take"):
        module.gru_forward(float32_input(5, 3, 4), None, params)


@pytest.mark.parametrize("layer_name", ["LSTM", "GRU"])
@MODULES
def test_float64_state_to_float32_layer(module, layer_name):
    layer = getattr(module, layer_name)(4, 6, seed=0)
    state = random_array((1, 3, 6), np.float64, 0)
    hx, name = ((float32_input(1, 3, 6), state), "c_0") if layer_name == "LSTM" else (state, "hx")
    with pytest.raises(TypeError, match=f"{name} has dtype float64 but the layer's dtype is float32"):
        layer(float32_input(5, 3, 4), hx)


# ---------------------------------------------------------------- the functional API


FUNCTIONAL_CONFIGS = [
    LSTMConfig(),
    LSTMConfig(num_layers=2, bidirectional=True, proj_size=3),
    LSTMConfig(num_layers=3, bias=False, batch_first=True),
    GRUConfig(),
    GRUConfig(num_layers=2, bidirectional=True),
    GRUConfig(num_layers=3, bias=False, batch_first=True),
]


def run_functional(module, config, params, problem) -> dict[str, np.ndarray]:
    name = config.layer_name.lower()
    output, finals, saved = getattr(module, f"{name}_forward")(
        problem.x, problem.hx, params, batch_first=config.batch_first
    )
    grad_x, grad_initials, grads = getattr(module, f"{name}_backward")(saved, problem.grad_output, problem.grad_h_n)
    assert list(grads) == list(params)
    results = {"output": output, "grad_x": grad_x, **grads}
    if config.layer_name == "LSTM":
        (results["h_n"], results["c_n"]), (results["grad_h_0"], results["grad_c_0"]) = finals, grad_initials
    else:
        results["h_n"], results["grad_hx"] = finals, grad_initials
    return results


@DTYPES
@pytest.mark.parametrize("config", FUNCTIONAL_CONFIGS, ids=str)
def test_functional_matches_reference_functional_the_layer_and_torch(config, dtype):
    torch_layer, fast, _ = make_torch_layers(config, dtype)
    problem = make_problem(config, dtype)

    # torch's own state dict passes as it is.
    compiled = run_functional(fastrnn.functional, config, torch_layer.state_dict(), problem)
    twin = run_functional(reference, config, fast.state_dict(), problem)

    assert_results_close(compiled, twin, dtype)
    assert_results_close(compiled, run_torch(torch_layer, problem), dtype)
    for name, value in run_layer(fast, problem).items():
        np.testing.assert_array_equal(compiled[name], value, err_msg=name)


@pytest.mark.parametrize("config", [FUNCTIONAL_CONFIGS[1], FUNCTIONAL_CONFIGS[4]], ids=str)
@pytest.mark.parametrize("module", [fastrnn.functional, reference], ids=["fastrnn", "reference"])
def test_functional_gradients_match_central_differences(module, config):
    small = type(config)(**{**vars(config), "input_size": 3, "hidden_size": 4})
    params = layer_of(reference, small, np.float64, seed=4).state_dict()
    x = random_array(small.input_shape(4, 2), np.float64, 5)

    report = gradcheck(module, x, params=params, cell=small.layer_name.lower())

    assert all(result.passed for result in report.values())


# ---------------------------------------------------------------- the caller's arrays


NO_MUTATION_CONFIGS = [
    LSTMConfig(num_layers=2, bidirectional=True, proj_size=3, dropout=0.3),
    LSTMConfig(input_size=8, hidden_size=72, num_layers=2, batch_first=True),
    GRUConfig(num_layers=3, dropout=0.2),
]


def _arrays(problem) -> dict[str, np.ndarray]:
    arrays = {"x": problem.x, "grad_output": problem.grad_output}
    for name, value in (("hx", problem.hx), ("grad_h_n", problem.grad_h_n)):
        arrays.update({f"{name}[{i}]": part for i, part in enumerate(_as_tuple(value))})
    return arrays


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("config", NO_MUTATION_CONFIGS, ids=str)
@MODULES
def test_layer_leaves_inputs_and_gradients_unchanged(module, config, batched):
    layer = layer_of(module, config, np.float64, seed=0)
    problem = make_problem(config, np.float64, steps=70, batch=4, batched=batched)
    arrays = _arrays(problem)
    snapshot = {name: value.copy() for name, value in arrays.items()}

    output, finals = layer(problem.x, problem.hx)
    grad_x, grad_initials = layer.backward(problem.grad_output, problem.grad_h_n)
    layer.eval()
    eval_output, eval_finals = layer(problem.x, problem.hx)

    for name, value in snapshot.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=f"{name} was modified")
    results = [output, grad_x, eval_output, *_as_tuple(finals), *_as_tuple(grad_initials), *_as_tuple(eval_finals)]
    for result in results:
        for name, value in arrays.items():
            assert not np.shares_memory(result, value), f"a result shares memory with {name}"


@pytest.mark.parametrize("config", NO_MUTATION_CONFIGS, ids=str)
@pytest.mark.parametrize("module", [fastrnn.functional, reference], ids=["fastrnn", "reference"])
def test_functional_leaves_inputs_and_params_unchanged(module, config):
    params = layer_of(reference, config, np.float64, seed=0).state_dict()
    problem = make_problem(config, np.float64, steps=70, batch=4)
    arrays = {**_arrays(problem), **params}
    snapshot = {name: value.copy() for name, value in arrays.items()}
    name = config.layer_name.lower()

    output, finals, saved = getattr(module, f"{name}_forward")(
        problem.x, problem.hx, params, batch_first=config.batch_first, dropout=config.dropout, training=True,
        generator=np.random.default_rng(2),
    )
    grad_x, grad_initials, grads = getattr(module, f"{name}_backward")(saved, problem.grad_output, problem.grad_h_n)

    for key, value in snapshot.items():
        np.testing.assert_array_equal(arrays[key], value, err_msg=f"{key} was modified")
    for result in [output, grad_x, *_as_tuple(finals), *_as_tuple(grad_initials), *grads.values()]:
        for key, value in arrays.items():
            assert not np.shares_memory(result, value), f"a result shares memory with {key}"
