"""The layer object: parameters, initialisation, gradient accumulation, modes, threads."""

from __future__ import annotations

import math
import re
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import reference

from .conftest import VALUE_TOLERANCES, Config, make_problem, random_array, run_layer

STATE_DICT_CONFIGS = [
    Config(),
    Config(bias=False),
    Config(num_layers=3, bidirectional=True),
    Config(input_size=2, hidden_size=5, num_layers=2, bias=False, bidirectional=True, nonlinearity="relu"),
]
LAYER_CLASSES = pytest.mark.parametrize("layer_class", [fastrnn.RNN, reference.RNN], ids=["fastrnn", "reference"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("config", STATE_DICT_CONFIGS, ids=str)
def test_state_dict_names_order_and_shapes_equal_torch(config, dtype):
    torch = pytest.importorskip("torch")
    torch_state = torch.nn.RNN(**vars(config)).state_dict()
    layer = fastrnn.RNN(**vars(config), dtype=dtype)

    state = layer.state_dict()

    assert list(state) == list(torch_state)
    assert list(layer.grads) == list(torch_state)
    for name, tensor in torch_state.items():
        assert state[name].shape == tuple(tensor.shape), name
        assert state[name].dtype == dtype, name
        assert layer.grads[name].shape == tuple(tensor.shape), name
    assert [name for name, _ in layer.named_parameters()] == list(torch_state)


def test_parameters_are_attributes_like_torch():
    layer = fastrnn.RNN(4, 6, num_layers=2, bidirectional=True)
    assert layer.weight_hh_l1_reverse is layer.state_dict()["weight_hh_l1_reverse"]
    assert [id(p) for p in layer.parameters()] == [id(p) for p in layer.state_dict().values()]
    with pytest.raises(AttributeError, match="weight_hh_l2"):
        layer.weight_hh_l2  # noqa: B018 - the attribute access is what is tested


@pytest.mark.parametrize("make", [
    lambda: fastrnn.RNN(3, 4, seed=0), lambda: reference.LSTM(3, 4, seed=0), lambda: fastrnn.GRUCell(3, 4, seed=0),
], ids=["fastrnn_rnn", "reference_lstm", "fastrnn_gru_cell"])
def test_assigning_a_parameter_copies_it_into_the_layer(make):
    layer = make()
    name = "weight_ih_l0" if hasattr(layer, "weight_ih_l0") else "weight_ih"
    own = getattr(layer, name)
    x = random_array((5, 3) if name == "weight_ih" else (5, 2, 3), np.float32, 0)
    before = layer(x)
    setattr(layer, name, np.zeros(own.shape, np.float64))  # cast to the layer's dtype, as load_state_dict does
    assert getattr(layer, name) is own and layer.state_dict()[name] is own
    assert not own.any()
    twin = make()
    twin.load_state_dict({**twin.state_dict(), name: np.zeros(own.shape)})
    after, expected = layer(x), twin(x)
    np.testing.assert_array_equal(after[0], expected[0])
    assert not np.array_equal(after[0], before[0])
    wrong = (own.shape[0] + 1, own.shape[1])
    with pytest.raises(ValueError, match=re.escape(f"'{name}' expected shape {own.shape}, got {wrong}")):
        setattr(layer, name, np.ones(wrong, np.float32))
    assert not own.any()
    layer.note = "other attributes are set as usual"
    assert layer.note == "other attributes are set as usual"


def test_hyper_parameters_are_exposed_like_torch():
    layer = fastrnn.RNN(4, 6, 2, "relu", False, True, 0.25, True, dtype=np.float64)
    assert (layer.input_size, layer.hidden_size, layer.num_layers) == (4, 6, 2)
    assert (layer.nonlinearity, layer.bias, layer.batch_first, layer.dropout, layer.bidirectional) == (
        "relu",
        False,
        True,
        0.25,
        True,
    )
    assert layer.dtype == np.float64
    assert repr(layer) == (
        "RNN(4, 6, num_layers=2, nonlinearity='relu', bias=False, batch_first=True, "
        "bidirectional=True, dropout=0.25, dtype=float64)"
    )


@pytest.mark.parametrize("hidden_size", [1, 6, 100])
def test_initialisation_is_uniform_within_one_over_sqrt_hidden_size(hidden_size):
    layer = fastrnn.RNN(3, hidden_size, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    bound = 1 / math.sqrt(hidden_size)

    values = np.concatenate([value.ravel() for value in layer.parameters()])

    assert np.abs(values).max() <= bound
    # Spread over the whole interval, not a narrower one.
    assert values.min() < -0.8 * bound and values.max() > 0.8 * bound
    assert abs(values.mean()) < 0.1 * bound


@LAYER_CLASSES
def test_initialisation_follows_the_seed(layer_class):
    config = Config(num_layers=2, bidirectional=True)
    first = layer_class(**vars(config), seed=5).state_dict()
    same = layer_class(**vars(config), seed=5).state_dict()
    other = layer_class(**vars(config), seed=6).state_dict()
    unseeded = layer_class(**vars(config)).state_dict()
    for name in first:
        np.testing.assert_array_equal(first[name], same[name], err_msg=name)
        assert not np.array_equal(first[name], other[name]), name
        assert not np.array_equal(first[name], unseeded[name]), name


def test_fastrnn_and_reference_initialise_alike():
    config = Config(num_layers=2, bidirectional=True)
    fast = fastrnn.RNN(**vars(config), seed=5).state_dict()
    slow = reference.RNN(**vars(config), seed=5).state_dict()
    for name in fast:
        np.testing.assert_array_equal(fast[name], slow[name], err_msg=name)


def test_generator_is_a_numpy_generator():
    assert isinstance(fastrnn.RNN(4, 6, seed=0).generator, np.random.Generator)


@LAYER_CLASSES
def test_gradients_accumulate_until_zero_grad(layer_class):
    config = Config(num_layers=2, bidirectional=True)
    layer = layer_class(**vars(config), dtype=np.float64, seed=0)
    problem = make_problem(config, np.float64)
    other = make_problem(config, np.float64, seed=10)
    single = {name: value for name, value in run_layer(layer, problem).items() if name in layer.grads}
    other_single = {name: value for name, value in run_layer(layer, other).items() if name in layer.grads}
    layer.zero_grad()

    layer(problem.x, problem.hx)
    layer.backward(problem.grad_output, problem.grad_h_n)
    layer.backward(problem.grad_output, problem.grad_h_n)  # twice from one forward
    layer(other.x, other.hx)
    layer.backward(other.grad_output, other.grad_h_n)

    for name, grad in layer.grads.items():
        np.testing.assert_allclose(grad, 2 * single[name] + other_single[name], rtol=1e-12, atol=1e-12, err_msg=name)
    layer.zero_grad()
    for name, grad in layer.grads.items():
        assert not grad.any(), name


def test_zero_grad_keeps_the_gradient_arrays():
    layer = fastrnn.RNN(4, 6, seed=0)
    arrays = dict(layer.grads)
    layer.zero_grad()
    assert all(layer.grads[name] is array for name, array in arrays.items())


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_a_replaced_gradient_array_takes_the_next_backward(cell):
    # The kernels' views of the gradient arrays are kept between calls; an entry of grads
    # replaced by the caller must be the one the next backward accumulates into.
    config = Config(num_layers=2, bidirectional=True)
    options = {key: value for key, value in vars(config).items() if cell == "RNN" or key != "nonlinearity"}
    layer = getattr(fastrnn, cell)(**options, dtype=np.float64, seed=0)
    problem = make_problem(config, np.float64)
    grad_state = problem.grad_h_n if cell != "LSTM" else (problem.grad_h_n, None)
    layer(problem.x)
    layer.backward(problem.grad_output, grad_state)
    once = {name: grad.copy() for name, grad in layer.grads.items()}
    name = "weight_hh_l1_reverse"
    old = layer.grads[name]
    layer.grads[name] = np.zeros_like(old)

    layer(problem.x)
    layer.backward(problem.grad_output, grad_state)

    np.testing.assert_array_equal(old, once[name])
    np.testing.assert_allclose(layer.grads[name], once[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.grads["weight_hh_l0"], 2 * once["weight_hh_l0"], rtol=1e-12, atol=1e-14)


def test_copies_of_a_layer_share_no_kept_kernel_arrays():
    import copy
    import pickle

    layer = fastrnn.LSTM(4, 6, seed=0)
    x = random_array((3, 2, 4), np.float32, 1)
    expected, _ = layer(x, requires_grad=False)
    twin = copy.deepcopy(layer)
    twin.load_state_dict({name: np.zeros_like(value) for name, value in layer.state_dict().items()})

    output, _ = layer(x, requires_grad=False)
    twin_output, _ = twin(x, requires_grad=False)

    np.testing.assert_array_equal(output, expected)
    assert not twin_output.any()
    assert pickle.loads(pickle.dumps(layer.grads)).__dict__ == {}


@LAYER_CLASSES
def test_train_and_eval_toggle_training(layer_class):
    layer = layer_class(4, 6)
    assert layer.training
    assert layer.eval() is layer and not layer.training
    assert layer.train() is layer and layer.training
    assert layer.train(False) is layer and not layer.training
    with pytest.raises(TypeError, match="mode must be a bool, got 'no'"):
        layer.train("no")


def test_eval_mode_forward_can_still_keep_state_on_request():
    config = Config(num_layers=2)
    layer = fastrnn.RNN(**vars(config), dtype=np.float64, seed=0)
    problem = make_problem(config, np.float64)
    expected = run_layer(layer, problem)

    layer.eval()
    results = run_layer(layer, problem)

    for name, value in expected.items():
        np.testing.assert_array_equal(results[name], value, err_msg=name)


@LAYER_CLASSES
@pytest.mark.parametrize("config", STATE_DICT_CONFIGS + [Config(batch_first=True)], ids=str)
def test_unbatched_shapes(layer_class, config):
    layer = layer_class(**vars(config), seed=0)
    x = random_array((7, config.input_size), np.float32, 0)
    hx = random_array(config.state_shape(1, batched=False), np.float32, 1)

    output, h_n = layer(x, hx)
    grad_x, grad_hx = layer.backward(np.ones_like(output), np.ones_like(h_n))

    assert output.shape == (7, config.directions * config.hidden_size)
    assert h_n.shape == (config.num_layers * config.directions, config.hidden_size)
    assert grad_x.shape == x.shape
    assert grad_hx.shape == hx.shape


@LAYER_CLASSES
@pytest.mark.parametrize("batch_first", [False, True])
def test_batched_shapes(layer_class, batch_first):
    config = Config(num_layers=2, bidirectional=True, batch_first=batch_first)
    layer = layer_class(**vars(config), seed=0)
    x = random_array(config.input_shape(7, 3), np.float32, 0)

    output, h_n = layer(x)
    grad_x, grad_hx = layer.backward(np.ones_like(output))

    assert output.shape == config.output_shape(7, 3)
    assert h_n.shape == config.state_shape(3)
    assert grad_x.shape == x.shape
    assert grad_hx.shape == h_n.shape


# ---------------------------------------------------------------- threads

# Large enough that the two directions of a layer run on separate worker threads.
PARALLEL_CONFIG = Config(input_size=64, hidden_size=128, num_layers=2, bidirectional=True)


@pytest.fixture
def restore_num_threads():
    original = fastrnn.get_num_threads()
    yield original
    fastrnn.set_num_threads(original)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_thread_gives_the_same_results(dtype, restore_num_threads):
    # Splitting the work changes how BLAS blocks its sums, so the results agree to
    # rounding, not bit for bit; float64 makes that bound tight.
    layer = fastrnn.RNN(**vars(PARALLEL_CONFIG), dtype=dtype, seed=0)
    problem = make_problem(PARALLEL_CONFIG, dtype, steps=50, batch=16)
    expected = run_layer(layer, problem)

    fastrnn.set_num_threads(1)
    assert fastrnn.get_num_threads() == 1
    results = run_layer(layer, problem)

    tolerance = 1e-12 if dtype == np.float64 else 1e-4
    for name, value in expected.items():
        np.testing.assert_allclose(results[name], value, rtol=tolerance, atol=tolerance, err_msg=name)


def test_repeated_parallel_calls_are_bitwise_identical():
    layer = fastrnn.RNN(**vars(PARALLEL_CONFIG), seed=0)
    problem = make_problem(PARALLEL_CONFIG, np.float32, steps=50, batch=16)
    first = run_layer(layer, problem)
    second = run_layer(layer, problem)
    for name, value in first.items():
        np.testing.assert_array_equal(second[name], value, err_msg=name)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_non_positive_ints(value, restore_num_threads):
    with pytest.raises(ValueError, match=f"number of threads must be a positive int, got {value!r}"):
        fastrnn.set_num_threads(value)
    assert fastrnn.get_num_threads() == restore_num_threads


def test_concurrent_calls_from_python_threads_match_serial_calls():
    layer = fastrnn.RNN(**vars(PARALLEL_CONFIG), seed=0)
    layer.eval()
    inputs = [random_array(PARALLEL_CONFIG.input_shape(50, 16), np.float32, seed) for seed in range(4)]
    serial = [layer(x, requires_grad=False) for x in inputs]
    concurrent: list = [None] * len(inputs)
    errors = []
    start = threading.Barrier(len(inputs))

    def work(index):
        try:
            start.wait()
            for _ in range(3):
                concurrent[index] = layer(inputs[index], requires_grad=False)
        except BaseException as error:  # re-raised in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, errors
    tolerances = VALUE_TOLERANCES["float32"]
    for (output, h_n), (expected_output, expected_h_n) in zip(concurrent, serial, strict=True):
        np.testing.assert_allclose(output, expected_output, **tolerances)
        np.testing.assert_allclose(h_n, expected_h_n, **tolerances)


def test_inference_outputs_stay_independent_across_calls():
    # Inference reuses the buffers of the lower layers' states from call to call; what it
    # returns must never be one of them, whatever the shapes of the calls in between.
    config = Config(input_size=8, hidden_size=16, num_layers=3, bidirectional=True)
    layer = fastrnn.RNN(**vars(config), dtype=np.float64, seed=0)
    oracle = reference.RNN(**vars(config), dtype=np.float64, seed=0)
    layer.eval()
    shapes = [(20, 4), (9, 3), (30, 5), (20, 4)]
    inputs = [
        random_array(config.input_shape(steps, batch), np.float64, seed) for seed, (steps, batch) in enumerate(shapes)
    ]
    outputs = [layer(x) for x in inputs]
    for x, (output, h_n) in zip(inputs, outputs, strict=True):
        expected_output, expected_h_n = oracle(x)
        np.testing.assert_allclose(output, expected_output, **VALUE_TOLERANCES["float64"])
        np.testing.assert_allclose(h_n, expected_h_n, **VALUE_TOLERANCES["float64"])
    assert not np.shares_memory(outputs[0][0], outputs[3][0])


# ---------------------------------------------------------------- saved state


@LAYER_CLASSES
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_output_kept_for_backward_cannot_be_overwritten(layer_class, batch_first, batched):
    # backward reads the hidden states through the returned output; torch refuses to
    # differentiate after such an in-place write, here the write itself is refused.
    config = Config(num_layers=2, batch_first=batch_first)
    layer = layer_class(**vars(config), dtype=np.float64, seed=0)
    problem = make_problem(config, np.float64, batched=batched)
    expected = run_layer(layer, problem)

    output, _ = layer(problem.x, problem.hx)
    with pytest.raises(ValueError, match="read-only"):
        output *= 2
    grad_x, _ = layer.backward(problem.grad_output, problem.grad_h_n)

    np.testing.assert_array_equal(grad_x, expected["grad_x"])


@pytest.mark.parametrize("module", [fastrnn.functional, reference], ids=["fastrnn", "reference"])
def test_functional_output_kept_for_backward_cannot_be_overwritten(module):
    params = fastrnn.RNN(4, 6, dtype=np.float64, seed=0).state_dict()
    output, _, _ = module.rnn_forward(random_array((5, 3, 4), np.float64, 0), None, params)
    with pytest.raises(ValueError, match="read-only"):
        output[0] = 0.0


@LAYER_CLASSES
@pytest.mark.parametrize("config", [Config(), Config(num_layers=3), Config(num_layers=2, bidirectional=True)], ids=str)
def test_outputs_not_kept_for_backward_are_writable(layer_class, config):
    layer = layer_class(**vars(config), seed=0)
    layer.eval()
    output, h_n = layer(random_array(config.input_shape(5, 3), np.float32, 0))
    assert output.flags.writeable and h_n.flags.writeable
