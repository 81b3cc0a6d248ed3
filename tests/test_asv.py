"""Smoke test of the asv suite in benchmarks/: every benchmark runs once per parameter combination.

Nothing is timed; the point is that a change to fastrnn's API or to the suite cannot leave
a benchmark broken until someone next runs asv.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
import pkgutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_PREFIXES = ("time_", "timeraw_", "track_", "peakmem_", "mem_")

# benchmarks/ is a top-level package of the repository, not of the installed project.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def benchmark_classes() -> list[type]:
    package = importlib.import_module("benchmarks")
    classes = []
    for module_info in pkgutil.iter_modules(package.__path__, prefix="benchmarks."):
        module = importlib.import_module(module_info.name)
        for _, member in inspect.getmembers(module, inspect.isclass):
            if member.__module__ == module.__name__ and benchmark_methods(member):
                classes.append(member)
    return classes


def benchmark_methods(cls: type) -> list[str]:
    return sorted(name for name in dir(cls) if name.startswith(BENCHMARK_PREFIXES))


def parameter_combinations(cls: type) -> list[tuple]:
    """The combinations asv runs: ``params`` is a list of value lists, or one value list."""
    params = getattr(cls, "params", [])
    if not params:
        return [()]
    if not isinstance(params[0], list):
        params = [params]
    assert len(getattr(cls, "param_names", [])) == len(params), f"{cls.__name__}: a name per parameter"
    return list(itertools.product(*params))


CLASSES = benchmark_classes()


@pytest.fixture(autouse=True)
def one_speedup_round(monkeypatch):
    """One interleaved round, with no settling calls, instead of several: the code path is
    the same, the test fast."""
    monkeypatch.setattr("benchmarks.layers.SPEEDUP_ROUNDS", 1)
    monkeypatch.setattr("benchmarks.layers.SETTLE_SECONDS", 0.0)


def test_suite_is_found():
    names = {f"{cls.__module__}.{cls.__name__}" for cls in CLASSES}
    assert {"benchmarks.layers.RNN", "benchmarks.layers.RNNLengths", "benchmarks.layers.RNNLengthsRatio",
            "benchmarks.compile.FirstCall"} <= names


@pytest.mark.parametrize(("steps", "batch"), [(100, 64), (2, 8), (1, 3)])
def test_suite_draws_the_lengths_the_bench_draws(steps, batch):
    from benchmarks._data import make_lengths
    from fastrnn.bench import draw_lengths

    assert make_lengths("full", steps, batch) is None
    np.testing.assert_array_equal(make_lengths("uniform", steps, batch), draw_lengths("uniform", steps, batch))


def combinations_to_run(cls: type) -> list[tuple]:
    """Every combination, except that the compile benchmarks run for their first cell only.

    Each of those starts interpreters that compile from an empty cache, up to minutes per
    cell, and every cell goes through the same benchmark code; CI's asv dry run runs all.
    """
    combinations = parameter_combinations(cls)
    if cls.__module__ == "benchmarks.compile" and combinations != [()]:
        first_cell = combinations[0][0]
        combinations = [params for params in combinations if params[0] == first_cell]
    return combinations


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: f"{cls.__module__.removeprefix('benchmarks.')}.{cls.__name__}")
def test_benchmark_runs(cls):
    ran = 0
    for params in combinations_to_run(cls):
        benchmark = cls()
        if hasattr(benchmark, "setup"):
            try:
                benchmark.setup(*params)
            except NotImplementedError:
                continue  # asv skips these combinations too
        ran += 1
        try:
            for name in benchmark_methods(cls):
                result = getattr(benchmark, name)(*params)
                if name.startswith("track_"):
                    assert isinstance(result, float) and math.isfinite(result) and result > 0, (name, params)
        finally:
            if hasattr(benchmark, "teardown"):
                benchmark.teardown(*params)
    assert ran, f"{cls.__name__} skips every parameter combination"
