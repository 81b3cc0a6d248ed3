"""A first call compiles (or loads from the cache) only what it needs: its cell, dtype and pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# The child reports, after each call, which C functions exist for which dtype.
FIRST_CALLS_SCRIPT = """
import json
import os
import sys

import numpy as np

import fastrnn
from fastrnn._kernels import native

cell = sys.argv[1]


def compiled():
    return {item.name: sorted(item.compiled) for item in native._exports}


layer = getattr(fastrnn, cell)(3, 4, seed=0)
x = np.ones((2, 1, 3), dtype=np.float32)
before = compiled()
layer.eval()
layer(x)
after_inference = compiled()
layer.train()
output, _ = layer(x)
layer.backward(np.ones_like(output))
print(json.dumps([before, after_inference, compiled(), {item.name: item.stages for item in native._exports}]))
"""


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_a_first_inference_call_compiles_neither_backward_kernels_nor_other_cells_or_dtypes(cell):
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", FIRST_CALLS_SCRIPT, cell], capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before, after_inference, after_training, stages = json.loads(result.stdout.splitlines()[-1])
    assert all(dtypes == [] for dtypes in before.values()), before
    backward_only = {name for name, item_stages in stages.items() if item_stages == ["backward"]}
    assert backward_only, "every cell has kernels that only its backward pass calls"
    for name, dtypes in after_inference.items():
        assert dtypes == ([] if name in backward_only else ["float32"]), (name, after_inference)
    assert all(dtypes == ["float32"] for dtypes in after_training.values()), after_training
    other_cells = {"RNN": ("lstm_", "gru_"), "LSTM": ("gru_",), "GRU": ("lstm_",)}[cell]
    assert not [name for name in stages if name.startswith(other_cells)], stages


COLD_TRAINING_CALLS_SCRIPT = """
import sys

import numpy as np

import fastrnn

for dtype in (np.float32, np.float64):
    layer = getattr(fastrnn, sys.argv[1])(3, 4, seed=0, dtype=dtype)
    output, _ = layer(np.ones((2, 1, 3), dtype=dtype))
    layer.backward(np.ones_like(output))
"""


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_compiling_from_an_empty_cache_prints_no_warning(cell, tmp_path):
    # Every warning is an error in the child: a first call that makes numba (or anything
    # else) warn fails here. Both dtypes, as each has its own tanh.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", COLD_TRAINING_CALLS_SCRIPT, cell], capture_output=True, text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr, result.stderr[-3000:]
