"""The multi-threaded engine: batch pieces and directions on numba's threads.

Layers that are too small for threads to pay off normally stay on one thread, so these
tests lower the work threshold to push small, quick problems through the parallel path,
and check that it was taken.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastrnn
from fastrnn import _parallel
from fastrnn._kernels.blas import openblas

from .conftest import Config, assert_results_close, make_layers, make_problem, run_layer

CONFIGS = [
    Config(num_layers=1, bidirectional=False),
    Config(num_layers=2, bidirectional=False, nonlinearity="relu"),
    Config(num_layers=2, bidirectional=True),
    Config(num_layers=3, bidirectional=True, bias=False, nonlinearity="relu"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 2, 5, 8])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_parallel_engine_matches_reference(config, batch, dtype, parallel_engine):
    fast, slow = make_layers(config, dtype)
    problem = make_problem(config, dtype, steps=6, batch=batch)

    results = run_layer(fast, problem)

    if config.bidirectional or batch > 1:
        assert parallel_engine, "the parallel path was not taken"
    assert_results_close(results, run_layer(slow, problem), dtype)


def test_parallel_engine_with_dropout_matches_reference(parallel_engine):
    config = Config(num_layers=3, bidirectional=True, dropout=0.3)
    fast, slow = make_layers(config, np.float64)
    fast.generator = np.random.default_rng(7)
    slow.generator = np.random.default_rng(7)
    problem = make_problem(config, np.float64, steps=5, batch=4)

    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float64)
    assert parallel_engine


GATED_CASES = [
    ("LSTM", {}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"num_layers": 2, "proj_size": 3}),
    ("LSTM", {"bidirectional": True, "proj_size": 2, "bias": False}),
    ("GRU", {}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("GRU", {"num_layers": 3, "bias": False}),
]


def _states(value):
    return value if isinstance(value, tuple) else (value,)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize(("cell", "options"), GATED_CASES, ids=[f"{c}-{o}" for c, o in GATED_CASES])
def test_parallel_gated_cells_match_reference(cell, options, batch, parallel_engine):
    _check_against_reference(cell, options, batch)
    if options.get("bidirectional") or batch > 1:
        assert parallel_engine, "the parallel path was not taken"


ONE_THREAD_CASES = [("RNN", {"num_layers": 2, "bidirectional": True}), ("RNN", {"nonlinearity": "relu"}),
                    *GATED_CASES]


@pytest.mark.parametrize(("cell", "options"), ONE_THREAD_CASES, ids=[f"{c}-{o}" for c, o in ONE_THREAD_CASES])
def test_one_thread_matches_reference(cell, options):
    # With one thread BLAS is held to one thread around the serial kernels.
    original = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)
    try:
        _check_against_reference(cell, options, batch=5)
    finally:
        fastrnn.set_num_threads(original)


@pytest.mark.parametrize(("cell", "options"), ONE_THREAD_CASES, ids=[f"{c}-{o}" for c, o in ONE_THREAD_CASES])
def test_one_thread_gives_a_small_layer_the_same_bits(cell, options):
    # A small layer runs on the calling thread either way; holding BLAS to one thread must
    # not change how the kernels cut their products (Dask workers run one thread each).
    layer = getattr(fastrnn, cell)(5, 8, dtype=np.float32, seed=0, **options)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 6, 5), dtype=np.float32)
    lengths = rng.integers(0, 8, 6)
    original = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(max(2, original))
        expected = _results(layer, x, lengths)
        fastrnn.set_num_threads(1)
        results = _results(layer, x, lengths)
    finally:
        fastrnn.set_num_threads(original)
    for actual, wanted in zip(results, expected, strict=True):
        np.testing.assert_array_equal(actual, wanted)


def _results(layer, x, lengths):
    """Inference outputs with and without lengths, then a backward's gradients."""
    results = [layer(x, requires_grad=False)[0], layer(x, requires_grad=False, lengths=lengths)[0]]
    layer.zero_grad()
    output, _ = layer(x, requires_grad=True, lengths=lengths)
    grad_x, _ = layer.backward(np.ones_like(output))
    return [*results, grad_x, *(grad.copy() for grad in layer.grads.values())]


def _check_against_reference(cell, options, batch):
    fast = getattr(fastrnn, cell)(4, 5, dtype=np.float64, seed=0, **options)
    slow = getattr(fastrnn.reference, cell)(4, 5, dtype=np.float64, seed=0, **options)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, batch, 4))
    output, finals = fast(x)
    expected_output, expected_finals = slow(x)
    grad_output = rng.standard_normal(output.shape)
    grad_finals = tuple(rng.standard_normal(final.shape) for final in _states(finals))
    grad_x, grad_initials = fast.backward(grad_output, grad_finals if cell == "LSTM" else grad_finals[0])
    expected_grad_x, expected_grad_initials = slow.backward(
        grad_output, grad_finals if cell == "LSTM" else grad_finals[0]
    )
    fast.eval()
    inference_output, _ = fast(x)

    tolerance = {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(output, expected_output, **tolerance)
    np.testing.assert_allclose(inference_output, expected_output, **tolerance)
    for actual, expected in zip(_states(finals), _states(expected_finals), strict=True):
        np.testing.assert_allclose(actual, expected, **tolerance)
    np.testing.assert_allclose(grad_x, expected_grad_x, **tolerance)
    for actual, expected in zip(_states(grad_initials), _states(expected_grad_initials), strict=True):
        np.testing.assert_allclose(actual, expected, **tolerance)
    for name, grad in fast.grads.items():
        np.testing.assert_allclose(grad, slow.grads[name], err_msg=name, **tolerance)


def test_blas_thread_setting_is_restored(parallel_engine):
    before = openblas.scipy_openblas_get_num_threads64_()
    config = Config(num_layers=2, bidirectional=True)
    fast, _ = make_layers(config, np.float32)
    run_layer(fast, make_problem(config, np.float32, steps=4, batch=4))
    assert parallel_engine
    assert openblas.scipy_openblas_get_num_threads64_() == before


def _blas_threads_seen_by_the_kernel(monkeypatch, fastrnn_threads):
    """(BLAS threads during a serial layer kernel, the kernel's flag for it, BLAS threads after)."""
    seen = []

    def serial(pieces, blas_single_threaded):
        seen.append((openblas.scipy_openblas_get_num_threads64_(), blas_single_threaded))

    monkeypatch.setattr(_parallel, "_num_threads", fastrnn_threads)
    before = openblas.scipy_openblas_get_num_threads64_()
    openblas.scipy_openblas_set_num_threads64_(2)
    try:
        _parallel.run_kernel(serial, None, 0)
        after = openblas.scipy_openblas_get_num_threads64_()
    finally:
        openblas.scipy_openblas_set_num_threads64_(before)
    return (*seen[0], after)


def test_one_thread_holds_blas_to_one_thread_for_the_call(monkeypatch):
    assert _blas_threads_seen_by_the_kernel(monkeypatch, 1) == (1, False, 2)


def test_more_threads_leave_blas_as_it_is_on_the_serial_path(monkeypatch):
    assert _blas_threads_seen_by_the_kernel(monkeypatch, 2) == (2, False, 2)


# Runs one layer kernel in a fresh interpreter and reports what numba did.
KERNEL_SCRIPT = """
import sys
import numba
import numpy as np
from fastrnn import _parallel, _stack
from fastrnn._kernels import elman
from fastrnn._kernels.native import ensure_compiled

spec = _stack.StackSpec("rnn_tanh", 3, 4, 1, True, True)
params = {name: np.full(shape, 0.1) for name, shape in spec.parameter_shapes().items()}
pairs = _stack.layer_parameters(spec, params, 0, np.float64)
steps, batch = 5, 2
as_bytes = _stack.as_bytes
ensure_compiled(np.float64)
arguments = (
    np.empty(0), as_bytes(np.ones((steps, batch, 3))), 3, 2, pairs["weight_ih"], pairs["weight_hh"], pairs["bias_ih"],
    pairs["bias_hh"],
    as_bytes(np.zeros((2, batch, 4))), as_bytes(np.empty((steps, batch, 8))), np.full(steps, batch),
    np.arange(steps) * batch, np.full(batch, steps), steps, batch, steps * batch, 4, False,
    as_bytes(np.empty((2, batch, 4))),
)
for kernel in sys.argv[1:]:
    if kernel == "parallel":
        elman.forward_layer_parallel(*arguments, 1, True)
    else:
        elman.forward_layer(*arguments, 1, False)
try:
    layer = numba.threading_layer()
except ValueError:
    layer = "none"
print(layer, sum(elman.forward_layer.stats.cache_hits.values()))
"""


def _run_kernel_script(cache_dir, *kernels):
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    result = subprocess.run(
        [sys.executable, "-c", KERNEL_SCRIPT, *kernels], env=environment, capture_output=True, text=True, check=True
    )
    return result.stdout.split()


def test_serial_kernel_loaded_from_cache_starts_no_threads(tmp_path):
    # numba's on-disk cache keys entries by bytecode, not by compile options: without a
    # name of its own, the parallel build of a kernel could be loaded as its serial build.
    assert _run_kernel_script(tmp_path, "parallel", "serial")[0] != "none"

    layer, serial_cache_hits = _run_kernel_script(tmp_path, "serial")

    assert int(serial_cache_hits) == 1, "the serial kernel was not loaded from the cache"
    assert layer == "none", "the serial kernel started numba's threads"


CONCURRENT_SCRIPT = """
import threading
import numpy as np
import fastrnn
from fastrnn import _parallel, _stack

_stack.PARALLEL_RECURRENCE_WORK = 0
fastrnn.set_num_threads(2)
layer = fastrnn.RNN(3, 8, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
inputs = [np.random.default_rng(seed).standard_normal((6, 4, 3)) for seed in range(4)]
expected = [layer(x)[0] for x in inputs]
results = [None] * len(inputs)
start = threading.Barrier(len(inputs))

def work(index):
    start.wait()
    for _ in range(20):
        results[index] = layer(inputs[index])[0]

threads = [threading.Thread(target=work, args=(index,)) for index in range(len(inputs))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(_parallel.threading_layer(), _parallel._layer_serialises, all(
    np.array_equal(result, value) for result, value in zip(results, expected)
))
"""


def test_workqueue_threading_layer_is_entered_by_one_caller_at_a_time():
    # numba's fallback layer must not be entered from two threads at once; fastrnn makes
    # concurrent callers take turns there instead of crashing or corrupting results.
    environment = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    result = subprocess.run(
        [sys.executable, "-c", CONCURRENT_SCRIPT], env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["workqueue", "True", "True"]


FORK_SCRIPT = """
import os
import numpy as np
import fastrnn
from fastrnn import _parallel, _stack

_stack.PARALLEL_RECURRENCE_WORK = 0
fastrnn.set_num_threads(2)
layer = fastrnn.RNN(3, 8, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
x = np.random.default_rng(0).standard_normal((6, 4, 3))
expected = layer(x)[0]
child = os.fork()
if child == 0:
    # One thread projects the inputs in one GEMM, not step by step: equal up to rounding.
    same = np.allclose(layer(x)[0], expected, rtol=1e-12, atol=1e-12)
    os._exit(0 if same and fastrnn.get_num_threads() == 1 else 3)
_, status = os.waitpid(child, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_of_a_threaded_process_runs_on_one_thread():
    result = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0"]


def test_callers_numba_thread_count_is_restored(parallel_engine):
    numba.set_num_threads(1)
    try:
        config = Config(num_layers=2, bidirectional=True)
        fast, _ = make_layers(config, np.float32)
        run_layer(fast, make_problem(config, np.float32, steps=4, batch=4))
        assert parallel_engine
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def _counted_row_gathers(monkeypatch) -> list:
    """Send every pack and unpack of a reordered batch through the threaded row gather,
    counting its calls."""
    from fastrnn import _schedule
    from fastrnn._kernels import rows

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    calls = []
    threaded = rows.take_rows

    def counted(*args):
        calls.append(numba.get_num_threads())
        return threaded(*args)

    monkeypatch.setattr(_schedule, "PARALLEL_TAKE_BYTES", 0)
    monkeypatch.setattr(rows, "take_rows", counted)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_threaded_pack_and_unpack_move_each_row_where_it_belongs(dtype, monkeypatch):
    from fastrnn._schedule import Schedule

    calls = _counted_row_gathers(monkeypatch)
    rng = np.random.default_rng(11)
    steps, batch, width = 9, 7, 5
    lengths = rng.integers(0, steps + 1, size=batch)
    lengths[:2] = [steps, 0]
    schedule = Schedule.of_lengths(lengths, steps)
    padded = rng.standard_normal((steps, batch, width)).astype(dtype)
    # The packed layout, written out step by step: step t holds the sequences longer than
    # t, longest first, equal lengths in the caller's order.
    order = sorted(range(batch), key=lambda b: -lengths[b])
    expected_packed = np.array([padded[t, b] for t in range(steps) for b in order if lengths[b] > t])

    packed = schedule.pack(padded)

    np.testing.assert_array_equal(packed, expected_packed)
    result = schedule.packed_array(width, dtype)
    result[: schedule.total] = expected_packed
    unpacked = schedule.unpack(result)
    expected_padded = np.where((np.arange(steps)[:, None] < lengths)[..., None], padded, 0)
    np.testing.assert_array_equal(unpacked, expected_padded)
    assert calls == [fastrnn.get_num_threads()] * 2, "both gathers should have run on fastrnn's threads"
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize("layer_name", ["RNN", "LSTM", "GRU"])
def test_threaded_row_gathers_give_the_same_bits_as_numpy(layer_name, monkeypatch):
    layer = getattr(fastrnn, layer_name)(4, 6, num_layers=2, bidirectional=True, seed=3, dtype=np.float64)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 5, 4))
    lengths = np.array([3, 8, 0, 5, 8])
    grad_output = rng.standard_normal((8, 5, 12))

    def run():
        output, _ = layer(x, lengths=lengths)
        grad_x, _ = layer.backward(grad_output)
        return output.copy(), grad_x

    expected = run()  # every gather below the threshold: np.take
    calls = _counted_row_gathers(monkeypatch)
    results = run()

    assert len(calls) == 4, "pack and unpack, forward and backward, should have run threaded"
    for result, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(result, want)
