"""Padded batches of sequences of different lengths: the ``lengths`` keyword of every layer
and functional forward, against torch's packed path (``pack_padded_sequence`` with
``enforce_sorted=False``, then ``pad_packed_sequence``) with the same weights, against the
NumPy reference, and against the semantics torch does not cover (length 0)."""

from __future__ import annotations

import dataclasses
import itertools

import numba
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import reference
from fastrnn.testing import GradcheckError, gradcheck

from .conftest import (
    VALUE_TOLERANCES,
    Config,
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
FUNCTIONAL_MODULES = pytest.mark.parametrize("module", [fastrnn.functional, reference], ids=["fastrnn", "reference"])
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])

# Each kind of layer, small: the tests below vary the stacking and layout with dataclasses.replace.
KINDS = {
    "rnn_tanh": Config(input_size=3, hidden_size=4),
    "rnn_relu": Config(input_size=3, hidden_size=4, nonlinearity="relu"),
    "lstm": LSTMConfig(input_size=3, hidden_size=4),
    "lstm_proj": LSTMConfig(input_size=3, hidden_size=4, proj_size=2),
    "gru": GRUConfig(input_size=3, hidden_size=4),
}
EACH_KIND = pytest.mark.parametrize("kind", list(KINDS))

STEPS = 6
BATCH = 5
# torch refuses a length of 0, so the patterns compared with torch have none.
TORCH_LENGTH_PATTERNS = {
    "all_full": [6, 6, 6, 6, 6],
    "one_long": [1, 6, 2, 1, 1],
    "all_one": [1, 1, 1, 1, 1],
    "all_short": [3, 2, 3, 1, 2],  # the longest ends before the padded length T
    "unsorted": [3, 6, 1, 5, 2],
    "repeated": [4, 2, 4, 2, 4],
}
ZERO_LENGTH_PATTERNS = {
    "zeros_mixed": [0, 6, 0, 3, 1],
    "zero_and_full": [6, 0, 6, 0, 6],
    "all_zero": [0, 0, 0, 0, 0],
}


def vary(kind: str, **changes):
    return dataclasses.replace(KINDS[kind], **changes)


def layer_of(module, config, dtype, **options):
    return getattr(module, config.layer_name)(**vars(config), dtype=dtype, **options)


def chosen(module, fast, slow):
    return fast if module is fastrnn else slow


def as_states(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def from_states(states: tuple):
    return states[0] if len(states) == 1 else states


def time_axis(config) -> int:
    return 1 if config.batch_first else 0


def steps_of(config, x: np.ndarray) -> int:
    return x.shape[time_axis(config)]


def padding_mask(config, lengths, steps: int) -> np.ndarray:
    """Booleans broadcasting against the layout's input and output: True at steps past a sequence's end."""
    padded = np.arange(steps)[:, None] >= np.asarray(lengths)[None, :]  # (T, B)
    return (padded.T if config.batch_first else padded)[..., None]


class WithLengths:
    """One of our layers whose every forward gets ``lengths``, so conftest's ``run_layer`` runs it."""

    def __init__(self, layer, lengths):
        self.layer = layer
        self.lengths = lengths

    def __call__(self, x, hx=None, **options):
        return self.layer(x, hx, lengths=self.lengths, **options)

    def __getattr__(self, name):
        return getattr(self.layer, name)


class TorchPacked:
    """A torch layer called on a padded batch through torch's packed path, so conftest's
    ``run_torch`` runs it: pack (unsorted), run, pad back to the full T."""

    def __init__(self, torch_layer, lengths, batch_first: bool):
        self.torch_layer = torch_layer
        self.lengths = torch.as_tensor(lengths, dtype=torch.int64)
        self.batch_first = batch_first

    def __call__(self, x, hx):
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, self.lengths, batch_first=self.batch_first, enforce_sorted=False
        )
        packed_output, finals = self.torch_layer(packed, hx)
        output, _ = torch.nn.utils.rnn.pad_packed_sequence(
            packed_output, batch_first=self.batch_first, total_length=x.shape[1 if self.batch_first else 0]
        )
        return output, finals

    def __getattr__(self, name):
        return getattr(self.torch_layer, name)


def run_with_lengths(layer, problem, lengths) -> dict[str, np.ndarray]:
    return run_layer(WithLengths(layer, lengths), problem)


def run_torch_packed(torch_layer, problem, lengths, batch_first: bool) -> dict[str, np.ndarray]:
    return run_torch(TorchPacked(torch_layer, lengths, batch_first), problem)


def initial_states(problem, config, batch: int, dtype) -> tuple[np.ndarray, ...]:
    """The initial states the forward started from: the problem's, or the zeros they default to."""
    if problem.hx is None:
        return tuple(np.zeros(shape, dtype=dtype) for shape in config.state_shapes(batch))
    return as_states(problem.hx)


# ---------------------------------------------------------------- parity with torch's packed path


# The four flags bidirectional, batch_first, with_hx, float64 take every triple of values in
# these 8 rows (the fourth is the parity of the other three). Rows i and 7 - i are each
# other's complement, and each such pair gets one stack depth, so every depth also meets
# both values of every flag.
FLAG_ROWS = [(a, b, c, a ^ b ^ c) for a, b, c in itertools.product([False, True], repeat=3)]
MATRIX = [(1 + min(i, 7 - i) % 3, *flags) for i, flags in enumerate(FLAG_ROWS)]


def matrix_id(row) -> str:
    num_layers, bidirectional, batch_first, with_hx, double = row
    return "-".join([
        f"L{num_layers}",
        "bi" if bidirectional else "uni",
        "batch_first" if batch_first else "time_major",
        "hx" if with_hx else "no_hx",
        "float64" if double else "float32",
    ])


@pytest.mark.parametrize("row", MATRIX, ids=matrix_id)
@EACH_KIND
@MODULES
def test_matches_torch_packed_sequences(module, kind, row):
    num_layers, bidirectional, batch_first, with_hx, double = row
    dtype = np.float64 if double else np.float32
    config = vary(kind, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    torch_layer, fast, slow = make_torch_layers(config, dtype)
    problem = make_problem(config, dtype, steps=STEPS, batch=BATCH, with_hx=with_hx)
    lengths = np.array([4, 6, 1, 4, 2])

    results = run_with_lengths(chosen(module, fast, slow), problem, lengths)

    assert_results_close(results, run_torch_packed(torch_layer, problem, lengths, batch_first), dtype)


@pytest.mark.parametrize("pattern", list(TORCH_LENGTH_PATTERNS))
@EACH_KIND
@MODULES
def test_length_patterns_match_torch(module, kind, pattern):
    config = vary(kind, num_layers=2, bidirectional=True)
    torch_layer, fast, slow = make_torch_layers(config, np.float64)
    problem = make_problem(config, np.float64, steps=STEPS, batch=BATCH)
    lengths = TORCH_LENGTH_PATTERNS[pattern]

    results = run_with_lengths(chosen(module, fast, slow), problem, lengths)

    assert_results_close(results, run_torch_packed(torch_layer, problem, lengths, False), np.float64)


@EACH_KIND
@MODULES
def test_full_lengths_equal_no_lengths(module, kind):
    config = vary(kind, num_layers=2, bidirectional=True, batch_first=True)
    fast, slow = make_layers(config, np.float64)
    layer = chosen(module, fast, slow)
    problem = make_problem(config, np.float64, steps=STEPS, batch=BATCH)

    assert_results_close(
        run_with_lengths(layer, problem, [STEPS] * BATCH), run_layer(layer, problem), np.float64
    )


@EACH_KIND
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_hx", "hx"])
def test_one_layer_route_gives_the_stacking_loops_bits(kind, bidirectional, with_hx, monkeypatch):
    # A one-layer call without lengths skips the stacking loop; full lengths go through it.
    # Both must give the same bits, forward, backward and in inference.
    config = vary(kind, bidirectional=bidirectional)
    layer, _ = make_layers(config, np.float32)
    problem = make_problem(config, np.float32, steps=STEPS, batch=BATCH, with_hx=with_hx)
    routed = []
    one_layer = fastrnn._stack._forward_one_layer
    monkeypatch.setattr(fastrnn._stack, "_forward_one_layer", lambda *args: routed.append(1) or one_layer(*args))

    through_loop = run_with_lengths(layer, problem, [STEPS] * BATCH)
    assert not routed
    direct = run_layer(layer, problem)
    assert len(routed) == 1
    assert direct.keys() == through_loop.keys()
    for name, value in direct.items():
        np.testing.assert_array_equal(value, through_loop[name], err_msg=name)

    layer.eval()
    looped_output, looped_finals = layer(problem.x, problem.hx, lengths=[STEPS] * BATCH)
    output, finals = layer(problem.x, problem.hx)
    assert len(routed) == 2
    np.testing.assert_array_equal(output, looped_output)
    for final, looped in zip(as_states(finals), as_states(looped_finals), strict=True):
        np.testing.assert_array_equal(final, looped)


@EACH_KIND
@MODULES
def test_gradient_at_padded_steps_is_ignored(module, kind):
    config = vary(kind, num_layers=2, bidirectional=True, batch_first=True)
    fast, slow = make_layers(config, np.float64)
    layer = chosen(module, fast, slow)
    problem = make_problem(config, np.float64, steps=STEPS, batch=BATCH)
    lengths = ZERO_LENGTH_PATTERNS["zeros_mixed"]
    expected = run_with_lengths(layer, problem, lengths)

    noise = random_array(problem.grad_output.shape, np.float64, 9) * 1e3
    problem.grad_output = problem.grad_output + np.where(padding_mask(config, lengths, STEPS), noise, 0.0)
    results = run_with_lengths(layer, problem, lengths)

    for name, value in expected.items():
        np.testing.assert_array_equal(results[name], value, err_msg=name)


# ---------------------------------------------------------------- length 0


def assert_padding_semantics(results, problem, config, lengths, dtype) -> None:
    """What holds whatever the weights: zeros past each end, and for length 0 the states
    passed through unchanged, forward and backward."""
    batch = len(lengths)
    steps = results["output"].shape[time_axis(config)]
    padded = np.broadcast_to(padding_mask(config, lengths, steps), results["output"].shape)
    assert np.all(results["output"][padded] == 0)
    padded = np.broadcast_to(padding_mask(config, lengths, steps), results["grad_x"].shape)
    assert np.all(results["grad_x"][padded] == 0)
    empty = np.asarray(lengths) == 0
    state_names = ("h_n", "c_n")[: len(config.state_names)]
    grad_names = ("grad_hx",) if len(state_names) == 1 else ("grad_h_0", "grad_c_0")
    initial = initial_states(problem, config, batch, dtype)
    upstream = as_states(problem.grad_h_n)
    for name, grad_name, start, grad_final in zip(state_names, grad_names, initial, upstream, strict=True):
        np.testing.assert_array_equal(results[name][:, empty], start[:, empty], err_msg=name)
        np.testing.assert_array_equal(results[grad_name][:, empty], grad_final[:, empty], err_msg=grad_name)


@pytest.mark.parametrize("pattern", list(ZERO_LENGTH_PATTERNS))
@pytest.mark.parametrize("with_hx,batch_first", [(True, False), (False, True)], ids=["hx", "no_hx-batch_first"])
@EACH_KIND
def test_zero_lengths_match_reference_and_pass_states_through(kind, with_hx, batch_first, pattern):
    config = vary(kind, num_layers=2, bidirectional=True, batch_first=batch_first)
    fast, slow = make_layers(config, np.float64)
    problem = make_problem(config, np.float64, steps=STEPS, batch=BATCH, with_hx=with_hx)
    lengths = ZERO_LENGTH_PATTERNS[pattern]

    results = run_with_lengths(fast, problem, lengths)

    assert_results_close(results, run_with_lengths(slow, problem, lengths), np.float64)
    assert_padding_semantics(results, problem, config, lengths, np.float64)


@EACH_KIND
@MODULES
def test_all_lengths_zero_give_no_parameter_gradient(module, kind):
    config = vary(kind, num_layers=2, bidirectional=True)
    fast, slow = make_layers(config, np.float64)
    layer = chosen(module, fast, slow)
    problem = make_problem(config, np.float64, steps=STEPS, batch=BATCH)

    results = run_with_lengths(layer, problem, [0] * BATCH)

    for name in layer.state_dict():
        np.testing.assert_array_equal(results[name], 0.0, err_msg=name)
    assert_padding_semantics(results, problem, config, [0] * BATCH, np.float64)


def sub_problem(problem, config, keep: np.ndarray):
    """The same problem restricted to the sequences ``keep`` selects."""
    batch_axis = 0 if config.batch_first else 1

    def states(value):
        return None if value is None else from_states(tuple(state[:, keep] for state in as_states(value)))

    return dataclasses.replace(
        problem, x=np.compress(keep, problem.x, axis=batch_axis), hx=states(problem.hx),
        grad_output=np.compress(keep, problem.grad_output, axis=batch_axis), grad_h_n=states(problem.grad_h_n),
    )


@EACH_KIND
@MODULES
def test_empty_sequences_add_nothing_to_parameter_gradients(module, kind):
    config = vary(kind, num_layers=2, bidirectional=True, batch_first=True)
    fast, slow = make_layers(config, np.float64)
    layer = chosen(module, fast, slow)
    problem = make_problem(config, np.float64, steps=STEPS, batch=BATCH)
    lengths = np.array(ZERO_LENGTH_PATTERNS["zeros_mixed"])
    nonempty = lengths > 0

    results = run_with_lengths(layer, problem, lengths)
    without_empty = run_with_lengths(layer, sub_problem(problem, config, nonempty), lengths[nonempty])

    names = list(layer.state_dict())
    assert_results_close({name: results[name] for name in names}, {name: without_empty[name] for name in names},
                         np.float64)


# ---------------------------------------------------------------- larger problems


@pytest.fixture
def counted_parallel_calls(parallel_engine):
    """``parallel_engine``, where numba has the two threads it asks for."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    return parallel_engine


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)], ids=["L1_uni", "L2_bi"])
@EACH_KIND
def test_threaded_path_with_random_lengths_matches_reference(kind, num_layers, bidirectional,
                                                             counted_parallel_calls):
    config = vary(kind, input_size=8, hidden_size=64, num_layers=num_layers, bidirectional=bidirectional)
    if config.layer_name == "LSTM" and config.proj_size:
        config = dataclasses.replace(config, proj_size=16)
    fast, slow = make_layers(config, np.float64)
    problem = make_problem(config, np.float64, steps=30, batch=64)
    lengths = np.random.default_rng(4).integers(0, 31, size=64)
    lengths[:2] = [30, 0]  # the extremes, whatever the draw

    results = run_with_lengths(fast, problem, lengths)

    assert counted_parallel_calls, "the threaded path was not taken"
    assert_results_close(results, run_with_lengths(slow, problem, lengths), np.float64)


# Lengths on both sides of the inference chunk boundaries (64 steps), and 0.
CHUNKED_LENGTHS = [65, 150, 0, 64, 1, 129]


@DTYPES
@pytest.mark.parametrize("num_layers,batch_first", [(2, False), (3, True)], ids=["L2_time_major", "L3_batch_first"])
@EACH_KIND
def test_chunked_inference_with_lengths_equals_training_forward(kind, num_layers, batch_first, dtype):
    # Unidirectional stacks of 2+ layers without gradients advance all layers 64 steps at
    # a time, another code path from the training forward; 150 steps run three chunks.
    config = vary(kind, hidden_size=3, num_layers=num_layers, batch_first=batch_first)
    fast, slow = make_layers(config, dtype)
    problem = make_problem(config, dtype, steps=150, batch=len(CHUNKED_LENGTHS))
    lengths = CHUNKED_LENGTHS

    trained_output, trained_finals = fast(problem.x, problem.hx, requires_grad=True, lengths=lengths)
    no_grad_output, no_grad_finals = fast(problem.x, problem.hx, requires_grad=False, lengths=lengths)
    fast.eval()
    eval_output, eval_finals = fast(problem.x, problem.hx, lengths=lengths)
    slow.eval()
    expected_output, expected_finals = slow(problem.x, problem.hx, lengths=lengths)

    tolerances = VALUE_TOLERANCES[np.dtype(dtype).name]
    for output, finals in [(no_grad_output, no_grad_finals), (eval_output, eval_finals)]:
        np.testing.assert_allclose(output, trained_output, **tolerances)
        for final, trained in zip(as_states(finals), as_states(trained_finals), strict=True):
            np.testing.assert_allclose(final, trained, **tolerances)
    np.testing.assert_allclose(eval_output, expected_output, **tolerances)
    for final, expected in zip(as_states(eval_finals), as_states(expected_finals), strict=True):
        np.testing.assert_allclose(final, expected, **tolerances)
    assert np.all(eval_output[np.broadcast_to(padding_mask(config, lengths, 150), eval_output.shape)] == 0)


# ---------------------------------------------------------------- functional API


def functional_options(config) -> dict:
    options = {"batch_first": config.batch_first}
    if config.layer_name == "RNN":
        options["nonlinearity"] = config.nonlinearity
    return options


def run_functional(module, config, params, problem, lengths) -> dict[str, np.ndarray]:
    name = config.layer_name.lower()
    output, finals, saved = getattr(module, f"{name}_forward")(
        problem.x, problem.hx, params, lengths=lengths, **functional_options(config)
    )
    grad_x, grad_initials, grads = getattr(module, f"{name}_backward")(saved, problem.grad_output, problem.grad_h_n)
    assert list(grads) == list(params)
    results = {"output": output, "grad_x": grad_x, **grads}
    if config.layer_name == "LSTM":
        (results["h_n"], results["c_n"]), (results["grad_h_0"], results["grad_c_0"]) = finals, grad_initials
    else:
        results["h_n"], results["grad_hx"] = finals, grad_initials
    return {name: np.array(value) for name, value in results.items()}


FUNCTIONAL_SHAPES = [
    {"num_layers": 1},
    {"num_layers": 2, "bidirectional": True},
    {"num_layers": 3, "batch_first": True},
]


@DTYPES
@pytest.mark.parametrize("shape", FUNCTIONAL_SHAPES, ids=lambda shape: "-".join(f"{k}={v}" for k, v in shape.items()))
@EACH_KIND
def test_functional_matches_reference_functional_and_layer(kind, shape, dtype):
    config = vary(kind, **shape)
    fast, _ = make_layers(config, dtype)
    params = fast.state_dict()
    problem = make_problem(config, dtype, steps=STEPS, batch=BATCH)
    lengths = ZERO_LENGTH_PATTERNS["zeros_mixed"]

    compiled = run_functional(fastrnn.functional, config, params, problem, lengths)

    assert_results_close(compiled, run_functional(reference, config, params, problem, lengths), dtype)
    assert_results_close(compiled, run_with_lengths(fast, problem, lengths), dtype)


# ---------------------------------------------------------------- truncated backpropagation through time


TBPTT_STEPS = 13
TBPTT_CHUNK = 5
# Ending inside the first chunk, exactly at a chunk boundary, inside the last, empty, full.
TBPTT_LENGTHS = np.array([13, 0, 5, 10, 7, 1])


def chunk_bounds(steps: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, steps)) for start in range(0, steps, chunk)]


def chunk_lengths(lengths: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The steps of each sequence inside [start, stop): 0 for a sequence that ended before."""
    return np.clip(lengths - start, 0, stop - start)


def time_slice(config, array: np.ndarray, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[time_axis(config)] = slice(start, stop)
    return array[tuple(index)]


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@EACH_KIND
@MODULES
def test_chunked_calls_carrying_the_state_equal_one_call(module, kind, batch_first):
    config = vary(kind, num_layers=2, batch_first=batch_first)
    fast, slow = make_layers(config, np.float64)
    layer = chosen(module, fast, slow)
    problem = make_problem(config, np.float64, steps=TBPTT_STEPS, batch=len(TBPTT_LENGTHS))
    whole_output, whole_finals = layer(problem.x, problem.hx, lengths=TBPTT_LENGTHS)

    outputs, carried = [], problem.hx
    for start, stop in chunk_bounds(TBPTT_STEPS, TBPTT_CHUNK):
        output, carried = layer(
            time_slice(config, problem.x, start, stop), carried, lengths=chunk_lengths(TBPTT_LENGTHS, start, stop)
        )
        outputs.append(output)

    tolerances = VALUE_TOLERANCES["float64"]
    np.testing.assert_allclose(np.concatenate(outputs, axis=time_axis(config)), whole_output, **tolerances)
    for final, expected in zip(as_states(carried), as_states(whole_finals), strict=True):
        np.testing.assert_allclose(final, expected, **tolerances)


@EACH_KIND
@FUNCTIONAL_MODULES
def test_backward_chained_through_chunks_equals_one_backward(module, kind):
    # Full backpropagation through a sequence split in chunks: each chunk's initial-state
    # gradient is the upstream final-state gradient of the chunk before it.
    config = vary(kind, num_layers=2)
    params = layer_of(reference, config, np.float64, seed=1).state_dict()
    problem = make_problem(config, np.float64, steps=TBPTT_STEPS, batch=len(TBPTT_LENGTHS))
    expected = run_functional(module, config, params, problem, TBPTT_LENGTHS)
    name = config.layer_name.lower()

    saved_chunks, carried = [], problem.hx
    for start, stop in chunk_bounds(TBPTT_STEPS, TBPTT_CHUNK):
        _, carried, saved = getattr(module, f"{name}_forward")(
            problem.x[start:stop], carried, params, lengths=chunk_lengths(TBPTT_LENGTHS, start, stop),
            **functional_options(config),
        )
        saved_chunks.append((start, stop, saved))
    grad_inputs, grad_carried = [], problem.grad_h_n
    param_grads = {key: np.zeros_like(value) for key, value in params.items()}
    for start, stop, saved in reversed(saved_chunks):
        grad_x, grad_carried, grads = getattr(module, f"{name}_backward")(
            saved, problem.grad_output[start:stop], grad_carried
        )
        grad_inputs.insert(0, grad_x)
        for key, value in grads.items():
            param_grads[key] += value

    tolerances = VALUE_TOLERANCES["float64"]
    np.testing.assert_allclose(np.concatenate(grad_inputs), expected["grad_x"], **tolerances)
    expected_initials = [expected[key] for key in ("grad_hx", "grad_h_0", "grad_c_0") if key in expected]
    for grad, expected_grad in zip(as_states(grad_carried), expected_initials, strict=True):
        np.testing.assert_allclose(grad, expected_grad, **tolerances)
    for key, value in param_grads.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-10, atol=1e-10, err_msg=key)


# ---------------------------------------------------------------- the caller's arrays


@pytest.mark.parametrize("kind", ["rnn_relu", "lstm_proj", "gru"])
@MODULES
def test_layer_leaves_x_hx_and_lengths_unchanged(module, kind):
    config = vary(kind, num_layers=2, bidirectional=True)
    layer = layer_of(module, config, np.float64, seed=0)
    problem = make_problem(config, np.float64, steps=STEPS, batch=BATCH)
    lengths = np.array([0, 6, 3, 3, 1], dtype=np.int32)
    arrays = {"x": problem.x, "lengths": lengths, **{f"hx[{i}]": s for i, s in enumerate(as_states(problem.hx))}}
    snapshot = {name: value.copy() for name, value in arrays.items()}

    output, finals = layer(problem.x, problem.hx, lengths=lengths)
    grad_x, grad_initials = layer.backward(problem.grad_output, problem.grad_h_n)
    layer.eval()
    eval_output, eval_finals = layer(problem.x, problem.hx, lengths=lengths)

    for name, value in snapshot.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=f"{name} was modified")
        assert arrays[name].dtype == value.dtype, name
    results = [output, grad_x, eval_output, *as_states(finals), *as_states(grad_initials), *as_states(eval_finals)]
    for result in results:
        for name, value in arrays.items():
            assert not np.shares_memory(result, value), f"a result shares memory with {name}"


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
@FUNCTIONAL_MODULES
def test_functional_leaves_x_hx_and_lengths_unchanged(module, kind):
    config = vary(kind, num_layers=2)
    params = layer_of(reference, config, np.float64, seed=0).state_dict()
    problem = make_problem(config, np.float64, steps=STEPS, batch=BATCH)
    lengths = np.array([6, 0, 2, 5, 2])
    arrays = {"x": problem.x, "lengths": lengths, **{f"hx[{i}]": s for i, s in enumerate(as_states(problem.hx))}}
    snapshot = {name: value.copy() for name, value in arrays.items()}

    run_functional(module, config, params, problem, lengths)

    for name, value in snapshot.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=f"{name} was modified")


@pytest.mark.parametrize(
    "lengths",
    [[3, 6, 0, 2, 2], (3, 6, 0, 2, 2), np.array([3, 6, 0, 2, 2], dtype=np.int32),
     np.array([3, 6, 0, 2, 2], dtype=np.uint8)],
    ids=["list", "tuple", "int32", "uint8"],
)
def test_any_integer_array_like_is_accepted(lengths):
    config = vary("gru", num_layers=2)
    fast, _ = make_layers(config, np.float64)
    problem = make_problem(config, np.float64, steps=STEPS, batch=BATCH)

    results = run_with_lengths(fast, problem, lengths)

    expected = run_with_lengths(fast, problem, np.array([3, 6, 0, 2, 2], dtype=np.int64))
    for name, value in expected.items():
        np.testing.assert_array_equal(results[name], value, err_msg=name)


# ---------------------------------------------------------------- random shapes


@st.composite
def length_problems(draw):
    """A config of any kind, down to one unit, step and sequence, and lengths in [0, T]."""
    kind = draw(st.sampled_from(list(KINDS)))
    hidden_size = draw(st.integers(1, 4))
    changes = {
        "input_size": draw(st.integers(1, 3)), "hidden_size": hidden_size, "num_layers": draw(st.integers(1, 3)),
        "bias": draw(st.booleans()), "batch_first": draw(st.booleans()), "bidirectional": draw(st.booleans()),
    }
    if KINDS[kind].layer_name == "LSTM":
        changes["proj_size"] = draw(st.sampled_from([0, 1])) if hidden_size > 1 else 0
    steps = draw(st.integers(1, 6))
    batch = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
    return vary(kind, **changes), steps, lengths


@settings(max_examples=20, deadline=None)
@given(case=length_problems(), with_hx=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(case=(KINDS["gru"], 1, [0]), with_hx=True, seed=0)
@example(case=(dataclasses.replace(KINDS["lstm"], input_size=1, hidden_size=1), 1, [1]), with_hx=False, seed=0)
@example(case=(dataclasses.replace(KINDS["rnn_relu"], num_layers=3, bidirectional=True), 4, [4, 0, 1]),
         with_hx=True, seed=0)
def test_matches_reference_over_random_shapes_and_lengths(case, with_hx, seed):
    config, steps, lengths = case
    fast, slow = make_layers(config, np.float64, seed=seed % 1000)
    problem = make_problem(config, np.float64, steps=steps, batch=len(lengths), with_hx=with_hx, seed=seed)

    results = run_with_lengths(fast, problem, lengths)

    assert_results_close(results, run_with_lengths(slow, problem, lengths), np.float64)


# ---------------------------------------------------------------- gradient checks


GRADCHECK_LENGTHS = [2, 0, 4, 3]  # unsorted, with an empty sequence and a full one


def gradcheck_config(kind: str, **changes):
    return vary(kind, input_size=2, hidden_size=3, num_layers=2, bidirectional=True, **changes)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@EACH_KIND
@MODULES
def test_layer_gradients_with_lengths_match_central_differences(module, kind, batch_first):
    config = gradcheck_config(kind, batch_first=batch_first)
    layer = layer_of(module, config, np.float64, seed=1)
    x = random_array(config.input_shape(4, len(GRADCHECK_LENGTHS)), np.float64, 2)
    hx = from_states(tuple(random_array(shape, np.float64, 3 + i)
                           for i, shape in enumerate(config.state_shapes(len(GRADCHECK_LENGTHS)))))

    report = gradcheck(layer, x, hx, lengths=GRADCHECK_LENGTHS)

    assert all(result.passed for result in report.values())


@EACH_KIND
@FUNCTIONAL_MODULES
def test_functional_gradients_with_lengths_match_central_differences(module, kind):
    config = gradcheck_config(kind, batch_first=True)
    params = layer_of(reference, config, np.float64, seed=4).state_dict()
    x = random_array(config.input_shape(4, len(GRADCHECK_LENGTHS)), np.float64, 5)

    report = gradcheck(
        module, x, params=params, cell=config.layer_name.lower(), lengths=GRADCHECK_LENGTHS,
        **functional_options(config),
    )

    assert set(report) >= {"input", *params}
    assert all(result.passed for result in report.values())


def test_gradcheck_of_a_cell_refuses_lengths():
    cell = fastrnn.GRUCell(2, 3, dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match="cell takes no lengths"):
        gradcheck(cell, random_array((4, 2), np.float64, 1), lengths=[1, 1, 1, 1])


def backward_ignores_lengths(layer_class):
    """A layer whose forward honours ``lengths`` but whose backward differentiates the
    forward over the whole padded batch, as if the lengths had been dropped on the way."""

    class BackwardIgnoresLengths(layer_class):
        def forward(self, x, hx=None, *, requires_grad=None, lengths=None):
            output, finals = super().forward(x, hx, requires_grad=False, lengths=lengths)
            if self.training if requires_grad is None else requires_grad:
                super().forward(x, hx, requires_grad=True)
            return output, finals

    return BackwardIgnoresLengths


@pytest.mark.parametrize("layer_name", ["RNN", "LSTM", "GRU"])
def test_gradcheck_catches_a_backward_that_ignores_lengths(layer_name):
    layer = backward_ignores_lengths(getattr(fastrnn, layer_name))(2, 3, dtype=np.float64, seed=0)
    x = random_array((4, len(GRADCHECK_LENGTHS), 2), np.float64, 1)

    # Without lengths both forwards are one and the same, so the check passes ...
    gradcheck(layer, x)
    # ... and with them the input gradient at the padded steps is no longer zero.
    with pytest.raises(GradcheckError, match=r"FAIL input\s"):
        gradcheck(layer, x, lengths=GRADCHECK_LENGTHS)


# ---------------------------------------------------------------- bad lengths


CALLERS = [(api, module, kind) for api in ("layer", "functional") for module in ("fastrnn", "reference")
           for kind in ("rnn_tanh", "lstm", "gru")]
EACH_CALLER = pytest.mark.parametrize("api,module,kind", CALLERS, ids=["-".join(caller) for caller in CALLERS])


def forward_with_lengths(api: str, module: str, kind: str, x, lengths):
    """One forward call of a small float32 layer or its functional twin."""
    config = KINDS[kind]
    if api == "layer":
        layer = layer_of(fastrnn if module == "fastrnn" else reference, config, np.float32, seed=0)
        return layer(x, lengths=lengths)
    functions = fastrnn.functional if module == "fastrnn" else reference
    params = layer_of(reference, config, np.float32, seed=0).state_dict()
    return getattr(functions, f"{config.layer_name.lower()}_forward")(
        x, None, params, lengths=lengths, **functional_options(config)
    )


def padded_batch():
    """T = 5 steps of B = 3 sequences of 3 features."""
    return random_array((5, 3, 3), np.float32, 0)


@EACH_CALLER
def test_float_lengths_are_refused(api, module, kind):
    with pytest.raises(TypeError, match="lengths must be a 1-D array of integers, got dtype float64"):
        forward_with_lengths(api, module, kind, padded_batch(), [1.0, 2.0, 3.0])


@EACH_CALLER
def test_bool_lengths_are_refused(api, module, kind):
    with pytest.raises(TypeError, match="lengths must be a 1-D array of integers, got dtype bool"):
        forward_with_lengths(api, module, kind, padded_batch(), [True, False, True])


@EACH_CALLER
def test_negative_length_is_refused(api, module, kind):
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\] \(the padded length T\), got -1"):
        forward_with_lengths(api, module, kind, padded_batch(), [2, -1, 5])


@EACH_CALLER
def test_length_past_the_padded_length_is_refused(api, module, kind):
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\] \(the padded length T\), got 6"):
        forward_with_lengths(api, module, kind, padded_batch(), [2, 6, 5])


@EACH_CALLER
def test_wrong_number_of_lengths_is_refused(api, module, kind):
    with pytest.raises(ValueError, match=r"one value per sequence of the batch \(3\), got 2"):
        forward_with_lengths(api, module, kind, padded_batch(), [2, 5])


@EACH_CALLER
def test_lengths_that_are_not_1d_are_refused(api, module, kind):
    with pytest.raises(ValueError, match=r"lengths must be 1-D with one value per sequence \(3\), got shape \(3, 1\)"):
        forward_with_lengths(api, module, kind, padded_batch(), [[2], [5], [1]])


@EACH_CALLER
def test_lengths_with_unbatched_input_are_refused(api, module, kind):
    with pytest.raises(ValueError, match="lengths needs batched input"):
        forward_with_lengths(api, module, kind, random_array((5, 3), np.float32, 0), [5])
