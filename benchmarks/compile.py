"""The first call in a fresh process: import, compile the kernels or load them, one step;
and the time to compile every kernel variant an Elman RNN can need.

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
import time
start = time.perf_counter()
import numpy as np
import fastrnn
rnn = fastrnn.RNN(8, 16, num_layers=2, bidirectional=True, seed=0)
output, _ = rnn(np.ones((4, 2, 8), dtype=np.float32))
rnn.backward(np.ones_like(output))
print(time.perf_counter() - start)
"""


def first_call_seconds(cache_dir: str) -> float:
    """Seconds to the end of the first forward and backward of a new process."""
    completed = subprocess.run(
        [sys.executable, "-c", FIRST_CALL_SCRIPT],
        env=dict(os.environ, NUMBA_CACHE_DIR=cache_dir),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return float(completed.stdout.split()[-1])


class FirstCall:
    """Import plus the first training step, with numba's on-disk cache empty or filled."""

    params = [["cold", "warm"]]
    param_names = ["cache"]
    unit = "s"
    timeout = 300  # a cold compile takes seconds, more on a busy machine

    def setup(self, cache):
        self.cache_dir = tempfile.mkdtemp(prefix="fastrnn-numba-cache-")
        if cache == "warm":
            first_call_seconds(self.cache_dir)

    def teardown(self, cache):
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def track_first_call(self, cache):
        return first_call_seconds(self.cache_dir)


# Every kernel an Elman RNN can need: both dtypes, one and two directions, on the calling
# thread and (for a layer with T*B*H*H of 4M or more) on numba's threads, training and
# inference. tanh and relu share their kernels, so one nonlinearity covers both.
COMPILE_EVERYTHING_SCRIPT = """
import time
start = time.perf_counter()
import numpy as np
import fastrnn
for dtype in (np.float32, np.float64):
    for bidirectional in (False, True):
        for steps, batch, hidden in ((3, 2, 8), (4, 16, 256)):
            rnn = fastrnn.RNN(4, hidden, num_layers=2, bidirectional=bidirectional, dtype=dtype, seed=0)
            x = np.ones((steps, batch, 4), dtype=dtype)
            output, _ = rnn(x)
            rnn.backward(np.ones_like(output))
            rnn.eval()
            rnn(x)
print(time.perf_counter() - start)
"""


class CompileEverything:
    """Import plus compiling every Elman kernel variant, with numba's on-disk cache empty."""

    unit = "s"
    timeout = 600
    number = 1
    repeat = 1

    def setup(self):
        self.cache_dir = tempfile.mkdtemp(prefix="fastrnn-numba-cache-")

    def teardown(self):
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def track_compile_everything(self):
        completed = subprocess.run(
            [sys.executable, "-c", COMPILE_EVERYTHING_SCRIPT],
            env=dict(os.environ, NUMBA_CACHE_DIR=self.cache_dir),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        return float(completed.stdout.split()[-1])
