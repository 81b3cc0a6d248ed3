"""fastrnn.dask: a layer over a batch-chunked Dask array on a two-process local cluster.

The results against the in-memory forward for every cell, with and without lengths; the
module shipped once per worker; the thread count the plugin gives each worker; a worker
killed mid-computation; bad input; and ``import fastrnn`` staying free of Dask.

Helpers the workers run are module-level here, so the workers' unpickling imports them.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastrnn
from fastrnn import reference

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
fastrnn_dask = pytest.importorskip("fastrnn.dask")

INPUT_SIZE = 5
HIDDEN_SIZE = 8
STEPS = 7
BATCH = 22
CHUNK = 6  # four chunks of the batch: 6, 6, 6 and 4


class CountingLSTM(fastrnn.LSTM):
    """Counts, in each process, how often it was unpickled and how many chunks it ran."""

    unpickled = 0
    chunks_run = 0

    def __setstate__(self, state):
        type(self).unpickled += 1
        super().__setstate__(state)

    def forward(self, *args, **kwargs):
        type(self).chunks_run += 1
        return super().forward(*args, **kwargs)


def counts() -> tuple[int, int]:
    return CountingLSTM.unpickled, CountingLSTM.chunks_run


def reset_counts() -> None:
    CountingLSTM.unpickled = CountingLSTM.chunks_run = 0


class SlowGRU(fastrnn.GRU):
    """A GRU whose every call takes a while, so a computation is still running when a worker dies."""

    def forward(self, *args, **kwargs):
        time.sleep(0.05)
        return super().forward(*args, **kwargs)


def thread_settings() -> dict:
    """What this process's fastrnn, the OpenBLAS it calls, and every thread pool threadpoolctl sees are set to."""
    from fastrnn._kernels.blas import openblas

    settings = {"fastrnn": fastrnn.get_num_threads(), "openblas": openblas.scipy_openblas_get_num_threads64_()}
    try:
        import threadpoolctl
    except ImportError:
        return settings
    settings["blas pools"] = [pool["num_threads"] for pool in threadpoolctl.threadpool_info()
                              if pool["user_api"] == "blas"]
    return settings


def cpu_per_wall_second_of_a_threaded_layer() -> float:
    """Process CPU seconds per wall second while a layer large enough for several threads runs."""
    layer = fastrnn.LSTM(32, 128).eval()
    x = np.random.default_rng(0).standard_normal((50, 64, 32)).astype(np.float32)
    layer(x)  # compiled (or read from numba's cache) outside the measurement
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < 0.5:
        layer(x)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def finished_chunks_by_worker(dask_scheduler) -> dict[str, int]:
    """On the scheduler: how many chunks' forward results each worker holds."""
    held: dict[str, int] = {}
    for key, task in dask_scheduler.tasks.items():
        if isinstance(key, tuple) and str(key[0]).startswith("fastrnn-forward-") and task.state == "memory":
            for worker in task.who_has:
                held[worker.address] = held.get(worker.address, 0) + 1
    return held


@pytest.fixture(scope="module")
def client():
    """One two-process cluster for the module, each worker held to one thread by the plugin."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
        client.register_plugin(fastrnn_dask.FastrnnThreads(1))
        yield client


def random_x(shape, dtype, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def results_of(output, finals) -> tuple[np.ndarray, ...]:
    return (output, *(finals if isinstance(finals, tuple) else (finals,)))


def chunk_by_chunk(layer, x, hx, lengths, batch_first) -> tuple[np.ndarray, ...]:
    """The in-memory forward of each batch chunk, joined: what every task computes."""
    batch_axis = 0 if batch_first else 1
    pieces = []
    for start in range(0, BATCH, CHUNK):
        rows = slice(start, start + CHUNK)
        chunk_x = x[rows] if batch_first else x[:, rows]
        if isinstance(hx, tuple):
            chunk_hx = tuple(state[:, rows] for state in hx)
        else:
            chunk_hx = None if hx is None else hx[:, rows]
        output, finals = layer(chunk_x, chunk_hx, lengths=None if lengths is None else lengths[rows])
        pieces.append(results_of(output, finals))
    # output's batch axis is the layout's; every state's is 1
    return tuple(
        np.concatenate(parts, axis=batch_axis if index == 0 else 1)
        for index, parts in enumerate(zip(*pieces, strict=True))
    )


CASES = [
    pytest.param(fastrnn.RNN, {"num_layers": 2, "bidirectional": True}, np.float32, id="RNN-tanh-2-bi"),
    pytest.param(fastrnn.RNN, {"nonlinearity": "relu", "batch_first": True}, np.float64, id="RNN-relu-batch_first"),
    pytest.param(fastrnn.LSTM, {"num_layers": 2, "proj_size": 3}, np.float32, id="LSTM-proj-2"),
    pytest.param(fastrnn.LSTM, {"bidirectional": True}, np.float64, id="LSTM-bi"),
    pytest.param(fastrnn.GRU, {"num_layers": 2, "batch_first": True}, np.float32, id="GRU-2-batch_first"),
    pytest.param(reference.GRU, {"bidirectional": True}, np.float64, id="reference.GRU-bi"),
]


@pytest.mark.parametrize("with_hx", [False, True], ids=["no-hx", "hx"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["no-lengths", "lengths"])
@pytest.mark.parametrize(("cls", "args", "dtype"), CASES)
def test_results_equal_the_in_memory_forward(client, cls, args, dtype, with_lengths, with_hx):
    layer = cls(INPUT_SIZE, HIDDEN_SIZE, **args, dtype=dtype, seed=1).eval()
    batch_first = layer.batch_first
    x = random_x((BATCH, STEPS, INPUT_SIZE) if batch_first else (STEPS, BATCH, INPUT_SIZE), dtype)
    lengths = np.random.default_rng(2).integers(0, STEPS + 1, BATCH) if with_lengths else None
    hx = None
    if with_hx:
        _, finals = layer(x)
        hx = tuple(state + 0.5 for state in finals) if isinstance(finals, tuple) else finals + 0.5
    expected_whole = results_of(*layer(x, hx, lengths=lengths))
    expected_chunks = chunk_by_chunk(layer, x, hx, lengths, batch_first)

    batch_axis = 0 if batch_first else 1
    dask_x = da.from_array(x, chunks=tuple(CHUNK if axis == batch_axis else -1 for axis in range(3)))
    # lengths as a Dask array chunked unlike x (it is rechunked to match), hx as NumPy.
    dask_lengths = None if lengths is None else da.from_array(lengths, chunks=4)
    output, finals = fastrnn_dask.forward(layer, dask_x, hx, lengths=dask_lengths, batch_first=batch_first)
    assert output.chunks[batch_axis] == dask_x.chunks[batch_axis]
    computed = client.gather(client.compute(list(results_of(output, finals))))

    for actual, chunked, whole in zip(computed, expected_chunks, expected_whole, strict=True):
        # Exactly what the layer gives each chunk; a whole batch can round differently in
        # the last bit, as the kernels block their products by batch size.
        np.testing.assert_array_equal(actual, chunked, strict=True)
        np.testing.assert_allclose(actual, whole, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_module_is_shipped_once_per_worker_not_per_chunk(client):
    layer = CountingLSTM(INPUT_SIZE, HIDDEN_SIZE, seed=3).eval()
    x = da.from_array(random_x((STEPS, 64, INPUT_SIZE), np.float32), chunks=(-1, 4, -1))  # 16 chunks
    client.run(reset_counts)
    output, (h_n, c_n) = fastrnn_dask.forward(layer, x)
    client.gather(client.compute([output, h_n, c_n]))

    per_worker = client.run(counts)
    assert sum(chunks for _, chunks in per_worker.values()) == 16
    for unpickled, chunks in per_worker.values():
        assert unpickled <= 1
        assert unpickled == 1 or not chunks
    assert max(chunks for _, chunks in per_worker.values()) > 1  # a worker ran several chunks on one copy


def test_the_callers_module_is_left_alone(client):
    layer = fastrnn.GRU(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, dropout=0.5, seed=4)  # training mode
    as_called = copy.deepcopy(layer).eval()
    generator_before = layer.generator.bit_generator.state
    x = random_x((STEPS, BATCH, INPUT_SIZE), np.float32)
    output, h_n = fastrnn_dask.forward(layer, da.from_array(x, chunks=(-1, CHUNK, -1)))
    layer.weight_hh_l0[:] = 0  # changed after the call: the tasks run the weights as they were
    computed = client.gather(client.compute([output, h_n]))

    assert layer.training
    assert layer.generator.bit_generator.state == generator_before
    for actual, expected in zip(computed, chunk_by_chunk(as_called, x, None, None, False), strict=True):
        np.testing.assert_array_equal(actual, expected, strict=True)  # eval mode: no dropout


def test_runs_on_the_local_threaded_scheduler():
    layer = fastrnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, seed=5).eval()
    x = random_x((STEPS, BATCH, INPUT_SIZE), np.float32)
    output, (h_n, c_n) = fastrnn_dask.forward(layer, da.from_array(x, chunks=(-1, CHUNK, -1)))
    computed = dask.compute(output, h_n, c_n, scheduler="threads")
    for actual, expected in zip(computed, chunk_by_chunk(layer, x, None, None, False), strict=True):
        np.testing.assert_array_equal(actual, expected, strict=True)


def test_the_feature_axis_is_joined_into_one_chunk():
    layer = fastrnn.RNN(INPUT_SIZE, HIDDEN_SIZE, seed=6).eval()
    x = random_x((STEPS, BATCH, INPUT_SIZE), np.float32)
    output, h_n = fastrnn_dask.forward(layer, da.from_array(x, chunks=(-1, CHUNK, 2)))
    computed = dask.compute(output, h_n, scheduler="sync")
    for actual, expected in zip(computed, chunk_by_chunk(layer, x, None, None, False), strict=True):
        np.testing.assert_array_equal(actual, expected, strict=True)


def test_each_worker_runs_on_the_threads_the_plugin_gives(client):
    settings = client.run(thread_settings)
    assert len(settings) == 2
    for worker in settings.values():
        assert worker["fastrnn"] == 1
        assert worker["openblas"] == 1
        assert all(threads == 1 for threads in worker.get("blas pools", []))

    client.register_plugin(fastrnn_dask.FastrnnThreads(2))  # replaces the first: same name
    try:
        for worker in client.run(thread_settings).values():
            assert worker["fastrnn"] == 2 and worker["openblas"] == 2
    finally:
        client.register_plugin(fastrnn_dask.FastrnnThreads(1))
    assert all(worker["fastrnn"] == 1 for worker in client.run(thread_settings).values())


def test_a_layer_that_could_use_more_threads_keeps_to_one_core_per_worker(client):
    # A busy machine only lowers this ratio, so the bound cannot fail for that reason;
    # two threads spinning for one call would put it near 2.
    for ratio in client.run(cpu_per_wall_second_of_a_threaded_layer).values():
        assert ratio < 1.4


def test_plugin_refuses_a_bad_thread_count():
    with pytest.raises(ValueError, match="positive int"):
        fastrnn_dask.FastrnnThreads(0)


# --- bad input: refused when the graph is built, before anything runs --------------------


@pytest.fixture
def lstm():
    return fastrnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2)


def test_time_chunked_input_is_refused(lstm):
    x = da.zeros((STEPS, BATCH, INPUT_SIZE), chunks=(3, CHUNK, -1), dtype=np.float32)
    with pytest.raises(ValueError, match="chunked along its time axis \\(axis 0, chunks \\(3, 3, 1\\)\\)"):
        fastrnn_dask.forward(lstm, x)


def test_time_chunked_batch_first_input_is_refused(lstm):
    x = da.zeros((BATCH, STEPS, INPUT_SIZE), chunks=(CHUNK, 2, -1), dtype=np.float32)
    with pytest.raises(ValueError, match="time axis \\(axis 1"):
        fastrnn_dask.forward(lstm, x, batch_first=True)


@pytest.mark.parametrize("shape", [(STEPS, INPUT_SIZE), (2, STEPS, BATCH, INPUT_SIZE)], ids=["2-D", "4-D"])
def test_wrong_number_of_dimensions_is_refused(lstm, shape):
    with pytest.raises(ValueError, match=f"expected x of 3 dimensions .* got {len(shape)} dimensions"):
        fastrnn_dask.forward(lstm, da.zeros(shape, dtype=np.float32))


def test_wrong_feature_size_is_refused(lstm):
    with pytest.raises(ValueError, match="I = 5, got shape \\(7, 22, 4\\)"):
        fastrnn_dask.forward(lstm, da.zeros((STEPS, BATCH, 4), dtype=np.float32))


def test_wrong_dtype_is_refused(lstm):
    with pytest.raises(TypeError, match="x has dtype float64 but the layer's dtype is float32"):
        fastrnn_dask.forward(lstm, da.zeros((STEPS, BATCH, INPUT_SIZE)))


def test_wrong_state_shape_is_refused(lstm):
    x = da.zeros((STEPS, BATCH, INPUT_SIZE), dtype=np.float32)
    h_0 = np.zeros((2, BATCH, HIDDEN_SIZE), dtype=np.float32)
    with pytest.raises(ValueError, match="expected c_0 of shape \\(2, 22, 8\\)"):
        fastrnn_dask.forward(lstm, x, (h_0, h_0[:, :3]))
    with pytest.raises(TypeError, match="tuple \\(h_0, c_0\\)"):
        fastrnn_dask.forward(lstm, x, h_0)
    with pytest.raises(TypeError, match="c_0 is None"):
        fastrnn_dask.forward(lstm, x, (h_0, None))


def test_wrong_lengths_are_refused(lstm):
    x = da.zeros((STEPS, BATCH, INPUT_SIZE), dtype=np.float32)
    with pytest.raises(ValueError, match="one value per sequence \\(22\\)"):
        fastrnn_dask.forward(lstm, x, lengths=np.ones(3, dtype=int))
    with pytest.raises(ValueError, match="lie in \\[0, 7\\]"):
        fastrnn_dask.forward(lstm, x, lengths=np.full(BATCH, 8))
    with pytest.raises(TypeError, match="integers"):
        fastrnn_dask.forward(lstm, x, lengths=da.ones(BATCH, dtype=np.float32))


def test_a_cell_is_refused():
    with pytest.raises(TypeError, match="takes a layer"):
        fastrnn_dask.forward(fastrnn.GRUCell(INPUT_SIZE, HIDDEN_SIZE), da.zeros((BATCH, INPUT_SIZE), dtype=np.float32))


def test_import_fastrnn_does_not_import_dask():
    code = "import sys, fastrnn; print(sorted({'dask', 'distributed', 'fastrnn.dask'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- a worker lost mid-computation (last: the cluster restarts that worker) --------------


def test_a_worker_killed_mid_computation_still_gives_the_complete_result(client):
    layer = SlowGRU(INPUT_SIZE, HIDDEN_SIZE, seed=7).eval()
    x = random_x((STEPS, 96, INPUT_SIZE), np.float32)  # 24 chunks of 50 ms or more: 0.6 s per worker
    output, h_n = fastrnn_dask.forward(layer, da.from_array(x, chunks=(-1, 4, -1)))
    processes = client.run(os.getpid)

    futures = client.compute([output, h_n])
    deadline = time.monotonic() + 30
    while not (held := client.run_on_scheduler(finished_chunks_by_worker)):
        assert time.monotonic() < deadline, "no chunk finished"
        time.sleep(0.005)
    victim = max(held, key=held.get)
    os.kill(processes[victim], signal.SIGKILL)  # with the finished chunks it holds
    assert not all(future.done() for future in futures)  # killed mid-computation
    computed = client.gather(futures)

    expected = [np.concatenate(parts, axis=1) for parts in zip(*(
        layer(x[:, start : start + 4]) for start in range(0, 96, 4)), strict=True)]
    for actual, wanted in zip(computed, expected, strict=True):
        np.testing.assert_array_equal(actual, wanted, strict=True)
    # The lost worker is replaced, and the plugin holds the new one to one thread too.
    client.wait_for_workers(2, timeout=60)
    workers = client.run(os.getpid)
    assert processes[victim] not in workers.values()
    assert all(worker["fastrnn"] == 1 for worker in client.run(thread_settings).values())
