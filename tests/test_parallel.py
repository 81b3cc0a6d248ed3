"""The multi-threaded engine: batch pieces and directions on worker threads.

Layers that are too small for threads to pay off normally stay on one thread, so these
tests lower the work threshold to push small, quick problems through the parallel path,
and check that it was taken.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import _stack
from fastrnn._kernels.blas import openblas

from .conftest import Config, assert_results_close, make_layers, make_problem, run_layer


@pytest.fixture
def parallel_engine(monkeypatch):
    """Two worker threads for every layer, counting the parallel task batches."""
    original_threads = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    monkeypatch.setattr(_stack, "PARALLEL_RECURRENCE_WORK", 0)
    calls = []
    real_run_tasks = _stack.run_tasks

    def counting_run_tasks(tasks, parallel):
        if parallel and len(tasks) > 1:
            calls.append(len(tasks))
        real_run_tasks(tasks, parallel)

    monkeypatch.setattr(_stack, "run_tasks", counting_run_tasks)
    yield calls
    fastrnn.set_num_threads(original_threads)


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


def test_blas_thread_setting_is_restored(parallel_engine):
    before = openblas.scipy_openblas_get_num_threads64_()
    config = Config(num_layers=2, bidirectional=True)
    fast, _ = make_layers(config, np.float32)
    run_layer(fast, make_problem(config, np.float32, steps=4, batch=4))
    assert parallel_engine
    assert openblas.scipy_openblas_get_num_threads64_() == before
