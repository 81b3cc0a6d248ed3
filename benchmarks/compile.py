"""The first call in a fresh process: import, compile the kernels or load them, one step;
and the time to compile every kernel variant a cell can need, for each cell kind.

numba keeps compiled kernels on disk, in ``NUMBA_CACHE_DIR`` when it is set. A user's first
training step therefore pays for a full compile (cold cache) or for loading the cached
machine code (warm cache). Each measurement is a new interpreter with a cache directory of
its own, so nothing compiled by the benchmark process or by earlier runs leaks in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

# The clock starts before numpy and fastrnn are imported (a user waits for those too) and
# stops after the first backward, leaving out the interpreter's own start-up.
FIRST_CALL_SCRIPT = """
import sys
import time
start = time.perf_counter()
import numpy as np
import fastrnn
layer = getattr(fastrnn, sys.argv[1])(8, 16, num_layers=2, bidirectional=True, seed=0)
output, _ = layer(np.ones((4, 2, 8), dtype=np.float32))
layer.backward(np.ones_like(output))
print(time.perf_counter() - start)
"""
CELLS = {"rnn_tanh": "RNN", "lstm": "LSTM", "gru": "GRU"}


def first_call_seconds(cache_dir: str, cell: str = "rnn_tanh") -> float:
    """Seconds to the end of the first forward and backward of a new process."""
    completed = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", FIRST_CALL_SCRIPT, CELLS[cell]],
        env=dict(os.environ, NUMBA_CACHE_DIR=cache_dir),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return float(completed.stdout.split()[-1])


class FirstCall:
    """Import plus the first float32 training step of a cell, with numba's on-disk cache empty or filled."""

    params = [list(CELLS), ["cold", "warm"]]
    param_names = ["cell", "cache"]
    unit = "s"
    timeout = 600  # a cold compile takes seconds, more on a busy machine

    def setup(self, cell, cache):
        self.cache_dir = tempfile.mkdtemp(prefix="fastrnn-numba-cache-")
        if cache == "warm":
            first_call_seconds(self.cache_dir, cell)

    def teardown(self, cell, cache):
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def track_first_call(self, cell, cache):
        return first_call_seconds(self.cache_dir, cell)


# Every kernel variant a cell can need, as ``python -m fastrnn compile`` builds them: both
# dtypes, on the calling thread and on numba's threads, training and inference.
COMPILE_EVERYTHING_SCRIPT = """
import io
import sys
import time
start = time.perf_counter()
from fastrnn._warmup import compile_kernels
compile_kernels([sys.argv[1]], ["float32", "float64"], progress=io.StringIO())
print(time.perf_counter() - start)
"""


class CompileEverything:
    """Import plus compiling every kernel variant of a cell, with numba's on-disk cache empty."""

    params = [list(CELLS)]
    param_names = ["cell"]
    unit = "s"
    timeout = 900
    number = 1
    repeat = 1

    def setup(self, cell):
        self.cache_dir = tempfile.mkdtemp(prefix="fastrnn-numba-cache-")

    def teardown(self, cell):
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def track_compile_everything(self, cell):
        completed = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", COMPILE_EVERYTHING_SCRIPT, cell],
            env=dict(os.environ, NUMBA_CACHE_DIR=self.cache_dir),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        return float(completed.stdout.split()[-1])
