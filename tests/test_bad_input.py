"""Bad calls fail up front with messages that say what was expected and what was received;
unusual but valid inputs (non-finite values, odd memory layouts) work."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference

from .conftest import (
    VALUE_TOLERANCES,
    Config,
    Problem,
    assert_results_close,
    make_layers,
    make_problem,
    make_torch_layers,
    random_array,
    run_layer,
    run_torch,
)

LAYER_CLASSES = pytest.mark.parametrize("layer_class", [fastrnn.RNN, reference.RNN], ids=["fastrnn", "reference"])
FUNCTIONAL_MODULES = pytest.mark.parametrize(
    "module", [fastrnn.functional, reference], ids=["fastrnn", "reference"]
)


@pytest.fixture
def layer():
    """Two layers of 6 units over 4 features, float32."""
    return fastrnn.RNN(4, 6, num_layers=2, seed=0)


def float32_input(*shape):
    return random_array(shape, np.float32, 0)


# ---------------------------------------------------------------- forward arguments


@LAYER_CLASSES
@pytest.mark.parametrize("shape", [(4,), (5, 3, 4, 1)], ids=["1d", "4d"])
def test_input_with_wrong_number_of_dimensions(layer_class, shape):
    layer = layer_class(4, 6, seed=0)
    with pytest.raises(ValueError, match=rf"expected input of 3 dimensions \(T, B, 4\).*got {len(shape)} dimensions"):
        layer(float32_input(*shape))


def test_input_with_wrong_feature_size(layer):
    with pytest.raises(ValueError, match=r"input_size=4, got shape \(5, 3, 5\)"):
        layer(float32_input(5, 3, 5))


def test_empty_input(layer):
    with pytest.raises(ValueError, match=r"at least one step.*got shape \(0, 3, 4\)"):
        layer(float32_input(0, 3, 4))


@pytest.mark.parametrize(
    "x_shape,hx_shape,expected",
    [
        ((5, 3, 4), (1, 3, 6), r"\(2, 3, 6\)"),
        ((5, 3, 4), (2, 6), r"\(2, 3, 6\)"),
        ((5, 4), (2, 1, 6), r"\(2, 6\)"),
    ],
    ids=["too_few_layers", "unbatched_hx_for_batched_input", "batched_hx_for_unbatched_input"],
)
def test_hx_with_wrong_shape(layer, x_shape, hx_shape, expected):
    received = str(hx_shape).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"expected hx of shape {expected}, got {received}"):
        layer(float32_input(*x_shape), float32_input(*hx_shape))


def test_float64_input_to_float32_layer(layer):
    with pytest.raises(TypeError, match="input has dtype float64 but the layer's dtype is float32"):
        layer(random_array((5, 3, 4), np.float64, 0))


def test_float64_hx_to_float32_layer(layer):
    with pytest.raises(TypeError, match="hx has dtype float64 but the layer's dtype is float32"):
        layer(float32_input(5, 3, 4), random_array((2, 3, 6), np.float64, 0))


def test_integer_input(layer):
    with pytest.raises(TypeError, match="input must be an array of dtype float32, got dtype int64"):
        layer(np.ones((5, 3, 4), dtype=np.int64))


@pytest.mark.parametrize("value", [{"a": 1}, "text", object()], ids=["dict", "str", "object"])
def test_input_that_is_not_numeric(layer, value):
    with pytest.raises(TypeError, match="input must be an array of dtype float32, got dtype"):
        layer(value)


def test_ragged_input(layer):
    with pytest.raises(TypeError, match="input must be an array.*got list that cannot be converted"):
        layer([[[0.0] * 4], [[0.0] * 3]])


@FUNCTIONAL_MODULES
def test_ragged_input_to_functional(module):
    params = fastrnn.RNN(4, 6, seed=0).state_dict()
    with pytest.raises(TypeError, match="input must be an array.*got list that cannot be converted"):
        module.rnn_forward([[[0.0] * 4], [[0.0] * 3]], None, params)


@FUNCTIONAL_MODULES
def test_non_numeric_input_to_functional(module):
    params = fastrnn.RNN(4, 6, seed=0).state_dict()
    with pytest.raises(TypeError, match="input must be an array of dtype float32 or float64, got dtype object"):
        module.rnn_forward({"a": 1}, None, params)


@FUNCTIONAL_MODULES
def test_functional_input_and_params_of_different_dtypes(module):
    params = fastrnn.RNN(4, 6, dtype=np.float64, seed=0).state_dict()
    with pytest.raises(TypeError, match="input has dtype float32 but params have dtype float64"):
        module.rnn_forward(float32_input(5, 3, 4), None, params)


@FUNCTIONAL_MODULES
def test_functional_params_without_first_layer(module):
    with pytest.raises(ValueError, match="'weight_ih_l0' and 'weight_hh_l0', got keys \\['bias_ih_l0'\\]"):
        module.rnn_forward(float32_input(5, 3, 4), None, {"bias_ih_l0": np.zeros(6, np.float32)})


@FUNCTIONAL_MODULES
def test_functional_params_that_are_not_a_mapping(module):
    with pytest.raises(TypeError, match="params must be a mapping.*got list"):
        module.rnn_forward(float32_input(5, 3, 4), None, [np.zeros((6, 4), np.float32)])


@FUNCTIONAL_MODULES
def test_functional_generator_of_wrong_type(module):
    params = fastrnn.RNN(4, 6, num_layers=2, seed=0).state_dict()
    with pytest.raises(TypeError, match="generator must be a numpy.random.Generator, got int"):
        module.rnn_forward(float32_input(5, 3, 4), None, params, dropout=0.5, training=True, generator=3)


# ---------------------------------------------------------------- constructor arguments


@pytest.mark.parametrize("name", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [0, -2])
def test_size_not_positive(name, value):
    arguments = {"input_size": 4, "hidden_size": 6, "num_layers": 1, name: value}
    with pytest.raises(ValueError, match=f"{name} must be a positive int, got {value}"):
        fastrnn.RNN(**arguments)


@pytest.mark.parametrize("name", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [2.5, "3", None, True], ids=["float", "str", "None", "bool"])
def test_size_not_an_int(name, value):
    arguments = {"input_size": 4, "hidden_size": 6, "num_layers": 1, name: value}
    expected = rf"{name} must be a positive int, got {value!r} of type {type(value).__name__}"
    with pytest.raises(TypeError, match=expected):
        fastrnn.RNN(**arguments)


@pytest.mark.parametrize("dropout", [-0.1, 1.5, float("nan")])
def test_dropout_outside_unit_interval(dropout):
    with pytest.raises(ValueError, match=rf"dropout must be a number in \[0, 1\], got {dropout}"):
        fastrnn.RNN(4, 6, num_layers=2, dropout=dropout)


def test_dropout_not_a_number():
    with pytest.raises(TypeError, match=r"dropout must be a number in \[0, 1\], got '0.5' of type str"):
        fastrnn.RNN(4, 6, num_layers=2, dropout="0.5")


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout=0.5 has no effect with num_layers=1"):
        fastrnn.RNN(4, 6, dropout=0.5)


@LAYER_CLASSES
def test_unknown_nonlinearity(layer_class):
    with pytest.raises(ValueError, match=r"nonlinearity must be one of \['relu', 'tanh'\], got 'gelu'"):
        layer_class(4, 6, nonlinearity="gelu")


@FUNCTIONAL_MODULES
def test_unknown_nonlinearity_in_functional(module):
    params = fastrnn.RNN(4, 6, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"nonlinearity must be one of \['relu', 'tanh'\], got 'sigmoid'"):
        module.rnn_forward(float32_input(5, 3, 4), None, params, nonlinearity="sigmoid")


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "complex128"])
def test_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match=f"dtype must be float32 or float64, got {np.dtype(dtype)}"):
        fastrnn.RNN(4, 6, dtype=dtype)


@pytest.mark.parametrize("flag", ["bias", "batch_first", "bidirectional"])
def test_flag_not_a_bool(flag):
    with pytest.raises(TypeError, match=f"{flag} must be a bool, got 'yes' of type str"):
        fastrnn.RNN(4, 6, **{flag: "yes"})


# ---------------------------------------------------------------- backward arguments


@LAYER_CLASSES
def test_backward_before_any_forward(layer_class):
    layer = layer_class(4, 6, seed=0)
    with pytest.raises(ValueError, match="backward needs a forward that kept its state, got none"):
        layer.backward(float32_input(5, 3, 6))


@LAYER_CLASSES
def test_backward_after_an_eval_mode_forward(layer_class):
    layer = layer_class(4, 6, seed=0)
    layer(float32_input(5, 3, 4))
    layer.eval()
    layer(float32_input(5, 3, 4))
    with pytest.raises(ValueError, match="backward needs a forward that kept its state.*requires_grad=True"):
        layer.backward(float32_input(5, 3, 6))


def test_backward_after_a_forward_without_gradients(layer):
    layer(float32_input(5, 3, 4), requires_grad=False)
    with pytest.raises(ValueError, match="backward needs a forward that kept its state"):
        layer.backward(float32_input(5, 3, 6))


@FUNCTIONAL_MODULES
def test_functional_backward_without_saved_state(module):
    params = fastrnn.RNN(4, 6, seed=0).state_dict()
    _, _, saved = module.rnn_forward(float32_input(5, 3, 4), None, params, requires_grad=False)
    with pytest.raises(TypeError, match="saved state returned by a forward with requires_grad=True, got NoneType"):
        module.rnn_backward(saved, float32_input(5, 3, 6))


@LAYER_CLASSES
@pytest.mark.parametrize(
    "x_shape,batch_first,grad_shape,expected",
    [
        ((5, 3, 4), False, (5, 3, 7), r"\(5, 3, 6\)"),
        ((5, 3, 4), False, (3, 5, 6), r"\(5, 3, 6\)"),
        ((3, 5, 4), True, (5, 3, 6), r"\(3, 5, 6\)"),
        ((5, 4), False, (5, 1, 6), r"\(5, 6\)"),
    ],
    ids=["width", "time_major_swapped", "batch_first_swapped", "unbatched"],
)
def test_grad_output_with_wrong_shape(layer_class, x_shape, batch_first, grad_shape, expected):
    layer = layer_class(4, 6, batch_first=batch_first, seed=0)
    layer(float32_input(*x_shape))
    received = str(grad_shape).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"expected grad_output of shape {expected} .*got {received}"):
        layer.backward(float32_input(*grad_shape))


@LAYER_CLASSES
def test_grad_h_n_with_wrong_shape(layer_class):
    layer = layer_class(4, 6, num_layers=2, seed=0)
    layer(float32_input(5, 3, 4))
    with pytest.raises(ValueError, match=r"expected grad_h_n of shape \(2, 3, 6\) \(h_n's\), got \(1, 3, 6\)"):
        layer.backward(float32_input(5, 3, 6), float32_input(1, 3, 6))


def test_grad_output_of_wrong_dtype(layer):
    layer(float32_input(5, 3, 4))
    with pytest.raises(TypeError, match="grad_output has dtype float64 but the layer's dtype is float32"):
        layer.backward(random_array((5, 3, 6), np.float64, 0))


# ---------------------------------------------------------------- load_state_dict


@LAYER_CLASSES
def test_load_state_dict_with_missing_entry(layer_class):
    layer = layer_class(4, 6, num_layers=2, seed=0)
    state = layer.state_dict()
    del state["bias_hh_l1"]
    with pytest.raises(ValueError, match=r"missing \['bias_hh_l1'\]"):
        layer.load_state_dict(state)


@LAYER_CLASSES
def test_load_state_dict_with_extra_entry(layer_class):
    layer = layer_class(4, 6, num_layers=2, seed=0)
    state = {**layer.state_dict(), "weight_ih_l2": np.zeros((6, 6), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected \['weight_ih_l2'\]"):
        layer.load_state_dict(state)


@LAYER_CLASSES
def test_load_state_dict_with_misshaped_entry(layer_class):
    layer = layer_class(4, 6, num_layers=2, seed=0)
    state = {**layer.state_dict(), "weight_hh_l1": np.zeros((6, 5), np.float32)}
    with pytest.raises(ValueError, match=r"'weight_hh_l1' expected shape \(6, 6\), got \(6, 5\)"):
        layer.load_state_dict(state)


def test_load_state_dict_rejects_everything_before_copying_anything(layer):
    before = {name: value.copy() for name, value in layer.state_dict().items()}
    state = {name: np.zeros_like(value) for name, value in before.items()}
    state["weight_hh_l1"] = np.zeros((6, 5), np.float32)

    with pytest.raises(ValueError, match="weight_hh_l1"):
        layer.load_state_dict(state)

    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_load_state_dict_with_non_numeric_entry(layer):
    state = {**layer.state_dict(), "bias_ih_l0": np.zeros(6, dtype=complex)}
    with pytest.raises(TypeError, match="parameter 'bias_ih_l0' must hold real numbers, got dtype complex128"):
        layer.load_state_dict(state)


def test_load_state_dict_of_a_non_mapping(layer):
    with pytest.raises(TypeError, match="state_dict must be a mapping of names to arrays, got list"):
        layer.load_state_dict(list(layer.state_dict().values()))


# ---------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "nonlinearity,value",
    [(nonlinearity, value) for nonlinearity in ["tanh", "relu"] for value in [np.nan, np.inf, -np.inf]],
)
def test_non_finite_input_propagates_like_torch(nonlinearity, value, dtype):
    torch = pytest.importorskip("torch")
    config = Config(num_layers=2, bidirectional=True, nonlinearity=nonlinearity)
    torch_rnn, fast, _ = make_torch_layers(config, dtype)
    x = random_array(config.input_shape(5, 3), dtype, 0)
    x[2, 1, 3] = value

    output, h_n = fast(x, requires_grad=False)

    with torch.no_grad():
        expected_output, expected_h_n = torch_rnn(torch.from_numpy(x))
    tolerances = VALUE_TOLERANCES[np.dtype(dtype).name]
    np.testing.assert_allclose(output, expected_output.numpy(), **tolerances)
    np.testing.assert_allclose(h_n, expected_h_n.numpy(), **tolerances)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_relu_of_infinite_pre_activation_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    # One step, so the infinities reach the activation and nothing after it: a pre-activation
    # of -inf must give 0 and one of +inf must give +inf.
    torch_rnn, fast, _ = make_torch_layers(Config(nonlinearity="relu"), dtype)
    x = random_array((1, 3, 4), dtype, 0)
    x[0, 0, 0] = np.inf
    x[0, 2, 1] = -np.inf

    output, _ = fast(x, requires_grad=False)

    with torch.no_grad():
        expected_output, _ = torch_rnn(torch.from_numpy(x))
    np.testing.assert_allclose(output, expected_output.numpy(), **VALUE_TOLERANCES[np.dtype(dtype).name])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_gradients_match_torch_for_tanh(value):
    pytest.importorskip("torch")
    config = Config(num_layers=2, bidirectional=True)
    torch_rnn, fast, _ = make_torch_layers(config, np.float64)
    problem = make_problem(config, np.float64)
    problem.x[2, 1, 3] = value

    assert_results_close(run_layer(fast, problem), run_torch(torch_rnn, problem), np.float64)


# ---------------------------------------------------------------- memory layouts


def _layouts(x: np.ndarray):
    """The same values as ``x`` in the memory layouts callers hand over."""
    padded = np.zeros(x.shape[:-1] + (x.shape[-1] + 3,), dtype=x.dtype)
    padded[..., 1 : 1 + x.shape[-1]] = x
    every_other = np.repeat(x, 2, axis=0)[::2]
    read_only = x.copy()
    read_only.flags.writeable = False
    return {
        "column_slice": padded[..., 1 : 1 + x.shape[-1]],
        "strided_steps": every_other,
        "fortran_order": np.asfortranarray(x),
        "read_only": read_only,
    }


@pytest.mark.parametrize("layout", ["column_slice", "strided_steps", "fortran_order", "read_only"])
@pytest.mark.parametrize(
    "config",
    [Config(num_layers=2, bidirectional=True), Config(num_layers=3), Config(num_layers=2, batch_first=True)],
    ids=str,
)
def test_unusual_memory_layouts_give_the_same_numbers(config, layout):
    fast, _ = make_layers(config, np.float64)
    problem = make_problem(config, np.float64)
    expected = run_layer(fast, problem)

    laid_out = Problem(**{name: _layouts(value)[layout] for name, value in vars(problem).items()})
    assert not laid_out.x.flags.c_contiguous or not laid_out.x.flags.writeable

    for name, value in run_layer(fast, laid_out).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    fast.eval()
    output, h_n = fast(laid_out.x, laid_out.hx)
    np.testing.assert_allclose(output, expected["output"], **VALUE_TOLERANCES["float64"])
    np.testing.assert_allclose(h_n, expected["h_n"], **VALUE_TOLERANCES["float64"])


@LAYER_CLASSES
def test_batch_first_layer_takes_a_transposed_view(layer_class):
    config = Config(num_layers=2, bidirectional=True)
    time_major = layer_class(**vars(config), dtype=np.float64, seed=0)
    batch_first = layer_class(**{**vars(config), "batch_first": True}, dtype=np.float64, seed=0)
    problem = make_problem(config, np.float64)
    expected = run_layer(time_major, problem)

    transposed = Problem(
        x=problem.x.transpose(1, 0, 2), hx=problem.hx,
        grad_output=problem.grad_output.transpose(1, 0, 2), grad_h_n=problem.grad_h_n,
    )
    results = run_layer(batch_first, transposed)

    for name in ("output", "grad_x"):
        results[name] = results[name].transpose(1, 0, 2)
    assert_results_close(results, expected, np.float64)


def test_python_lists_are_accepted(layer):
    x = float32_input(5, 3, 4)
    double = fastrnn.RNN(4, 6, num_layers=2, dtype=np.float64)
    double.load_state_dict(layer.state_dict())
    output, _ = double(x.astype(np.float64).tolist())
    expected, _ = double(x.astype(np.float64))
    np.testing.assert_array_equal(output, expected)


@LAYER_CLASSES
@pytest.mark.parametrize(
    ("replacement", "error", "message"),
    [
        (np.zeros(1, np.float32), ValueError, r"grads\['weight_hh_l0'\] must be a float32 array of shape \(6, 6\)"),
        (np.zeros((6, 6), np.float64), ValueError, r"must be a float32 array of shape \(6, 6\), got float64"),
        (np.zeros((6, 6), np.float32).T, ValueError, "must be C-contiguous and writable"),
        ([[0.0] * 6] * 6, TypeError, r"grads\['weight_hh_l0'\] must be a numpy array, got list"),
        (None, ValueError, r"'weight_hh_l0' is missing"),
    ],
    ids=["wrong-shape", "wrong-dtype", "transposed-view", "list", "missing"],
)
def test_unusable_gradient_buffers_are_refused_before_backward_runs(layer_class, replacement, error, message):
    # Backward accumulates into layer.grads in place: a buffer it cannot write by address
    # must be refused, not written past its end or into a copy.
    layer = layer_class(4, 6, num_layers=2, seed=0)
    output, _ = layer(float32_input(3, 2, 4))
    if replacement is None:
        del layer.grads["weight_hh_l0"]
    else:
        layer.grads["weight_hh_l0"] = replacement
    untouched = {name: np.array(value, copy=True) for name, value in layer.grads.items()}

    with pytest.raises(error, match=message):
        layer.backward(np.ones(output.shape, np.float32))

    for name, value in untouched.items():
        np.testing.assert_array_equal(layer.grads[name], value)
