"""fastrnn's RNN, LSTM and GRU against their twins in ``fastrnn.reference``: time, speedup
and peak memory, and the time of a padded batch whose sequences each run their own length.

Every configuration is run by the compiled layer and by its plain-NumPy baseline with the
same weights and input. "forward" is inference (an eval-mode layer, which keeps nothing for
backward); "forward_backward" is a training step's computation (forward, then backward).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from fastrnn.bench import SETTLE_SECONDS

from ._data import BACKENDS, LENGTHS_MODES, Problem, make_layer, make_problem, run_forward, takes_lengths

# (T, B, I, H). Small enough that the per-step Python loop of the reference finishes the
# whole grid in minutes, large enough that the GEMMs are not pure call overhead.
SHAPES = [(100, 8, 64, 128), (50, 32, 128, 256)]
NUM_LAYERS = [1, 2]
BIDIRECTIONAL = [False, True]
DTYPES = ["float32", "float64"]
CELLS = ["rnn_tanh", "lstm", "gru"]
# LSTM and GRU run on part of the grid, (shape, num_layers, bidirectional) in float32 only
# (one kernel source serves both dtypes, and the Elman cell covers float64), so that the
# suite stays quick: their reference does three or four times the Elman cell's work per
# step, and two bidirectional layers at the larger shape would be its slowest entry.
GATED_CELL_GRID = [(SHAPES[0], 1, False), (SHAPES[0], 2, True), (SHAPES[1], 1, False)]

# Interleaved samples per implementation in one speedup measurement; the best of each counts.
SPEEDUP_ROUNDS = 7
# Sub-millisecond calls are repeated within a sample until it lasts this long.
MIN_SAMPLE_SECONDS = 0.005

# Many steps and batch entries with small layers: what a call keeps grows with T*B*H (a few
# hundred MB here, well above the interpreter's own memory) while its work stays under a
# second. The inference path of a unidirectional stack keeps only one chunk of steps.
MEMORY_SHAPE = (4000, 64, 16, 64)
MEMORY_NUM_LAYERS = 2

# (T, B, I, H) of the lengths benchmarks, one float32 layer, one direction: the shape of the
# lengths targets (with uniform lengths, at most 0.65x the full-length time), and the first
# of SHAPES. The reference runs the second only: its per-step loop takes seconds per
# training step at the first.
LENGTHS_SHAPES = [(100, 64, 128, 256), SHAPES[0]]
LENGTHS_REFERENCE_SHAPES = [SHAPES[0]]


def forward_backward(layer, problem: Problem) -> None:
    run_forward(layer, problem)
    layer.backward(problem.grad_output)


def skip_outside_grid(
    cell: str, shape: tuple[int, int, int, int], num_layers: int, bidirectional: bool, dtype: str
) -> None:
    """asv skips a parameter combination whose setup raises NotImplementedError."""
    if cell != "rnn_tanh" and (dtype != "float32" or (shape, num_layers, bidirectional) not in GATED_CELL_GRID):
        raise NotImplementedError(f"{cell} runs in float32 on (shape, num_layers, bidirectional) in {GATED_CELL_GRID}")


def warm_up(
    training_layer, inference_layer, shape, bidirectional: bool, dtype: str, lengths: str = "full"
) -> None:
    """Compile, or load from numba's cache, every kernel the layers' benchmarks call.

    Kernels are specialised on dtype and layout, not on sizes, so a two-step sequence does
    it: cheap enough for setup to repeat before every sample, and it keeps the peak memory
    of the process far below what a measured call needs. With ``lengths`` its sequences
    run one step or two, which reaches the kernels of the lengths path.
    """
    _, batch, input_size, hidden_size = shape
    short = make_problem((2, batch, input_size, hidden_size), bidirectional, dtype, lengths)
    forward_backward(training_layer, short)
    run_forward(inference_layer, short)


class RNN:
    """Wall time of inference and of a training step, per backend and cell."""

    params = [list(BACKENDS), CELLS, SHAPES, NUM_LAYERS, BIDIRECTIONAL, DTYPES]
    param_names = ["backend", "cell", "shape", "num_layers", "bidirectional", "dtype"]

    def setup(self, backend, cell, shape, num_layers, bidirectional, dtype):
        skip_outside_grid(cell, shape, num_layers, bidirectional, dtype)
        self.problem = make_problem(shape, bidirectional, dtype)
        self.training_layer = make_layer(backend, cell, shape, num_layers, bidirectional, dtype)
        self.inference_layer = make_layer(backend, cell, shape, num_layers, bidirectional, dtype).eval()
        warm_up(self.training_layer, self.inference_layer, shape, bidirectional, dtype)

    def time_forward(self, *params):
        self.inference_layer(self.problem.x)

    def time_forward_backward(self, *params):
        forward_backward(self.training_layer, self.problem)


def _calls_per_sample(function: Callable[[], object]) -> int:
    start = time.perf_counter()
    function()
    elapsed = time.perf_counter() - start
    return max(1, math.ceil(MIN_SAMPLE_SECONDS / max(elapsed, 1e-9)))


def best_seconds_per_call(functions: list[Callable[[], object]], rounds: int) -> list[float]:
    """Best time per call of each function, sampled in turn so that they share the machine's
    quiet and busy moments alike.

    Each sample follows untimed calls of its own function, as in ``python -m fastrnn bench``:
    NumPy's OpenBLAS threads spin for about 0.1 s after the reference's products, and
    fastrnn's threads sampled inside that window ran up to 2x slower.
    """
    calls = [_calls_per_sample(function) for function in functions]
    best = [math.inf] * len(functions)
    for _ in range(rounds):
        for index, (function, count) in enumerate(zip(functions, calls, strict=True)):
            settled = time.perf_counter() + SETTLE_SECONDS
            while time.perf_counter() < settled:
                function()
            start = time.perf_counter()
            for _ in range(count):
                function()
            best[index] = min(best[index], (time.perf_counter() - start) / count)
    return best


class RNNSpeedup:
    """How many times faster fastrnn is than the NumPy reference, both timed in one call.

    A ratio of timings taken side by side holds on a noisy machine, where absolute times
    from separate benchmark processes drift.
    """

    params = [CELLS, SHAPES, NUM_LAYERS, BIDIRECTIONAL, DTYPES]
    param_names = ["cell", "shape", "num_layers", "bidirectional", "dtype"]
    unit = "x"

    def setup(self, cell, shape, num_layers, bidirectional, dtype):
        skip_outside_grid(cell, shape, num_layers, bidirectional, dtype)
        self.problem = make_problem(shape, bidirectional, dtype)
        backends = ("fastrnn", "reference")  # the order ``_speedup`` divides in
        self.training_layers = [
            make_layer(name, cell, shape, num_layers, bidirectional, dtype) for name in backends
        ]
        self.inference_layers = [
            make_layer(name, cell, shape, num_layers, bidirectional, dtype).eval() for name in backends
        ]
        for training_layer, inference_layer in zip(self.training_layers, self.inference_layers, strict=True):
            warm_up(training_layer, inference_layer, shape, bidirectional, dtype)

    def _speedup(self, fastrnn_call: Callable[[], object], reference_call: Callable[[], object]) -> float:
        fastrnn_seconds, reference_seconds = best_seconds_per_call([fastrnn_call, reference_call], SPEEDUP_ROUNDS)
        return reference_seconds / fastrnn_seconds

    def track_speedup_forward(self, *params):
        fastrnn_layer, reference_layer = self.inference_layers
        return self._speedup(lambda: fastrnn_layer(self.problem.x), lambda: reference_layer(self.problem.x))

    def track_speedup_forward_backward(self, *params):
        fastrnn_layer, reference_layer = self.training_layers
        return self._speedup(
            lambda: forward_backward(fastrnn_layer, self.problem),
            lambda: forward_backward(reference_layer, self.problem),
        )


def skip_without_lengths(layer, lengths: str) -> None:
    """asv skips the lengths benchmarks of a commit whose layers take no ``lengths=``."""
    if lengths != "full" and not takes_lengths(layer):
        raise NotImplementedError("this fastrnn's layers take no lengths=")


class RNNLengths:
    """Wall time of inference and of a training step on a padded batch: every sequence at
    full length, or each one for its own length, drawn uniformly from [1, T].

    Both modes hold the same input, so the two times differ by the lengths alone; the
    ratio is tracked, measured side by side, in ``RNNLengthsRatio``.
    """

    params = [list(BACKENDS), CELLS, LENGTHS_SHAPES, LENGTHS_MODES]
    param_names = ["backend", "cell", "shape", "lengths"]

    def setup(self, backend, cell, shape, lengths):
        if backend == "reference" and shape not in LENGTHS_REFERENCE_SHAPES:
            raise NotImplementedError(f"the reference runs lengths on {LENGTHS_REFERENCE_SHAPES} only")
        self.problem = make_problem(shape, False, "float32", lengths)
        self.training_layer = make_layer(backend, cell, shape, 1, False, "float32")
        self.inference_layer = make_layer(backend, cell, shape, 1, False, "float32").eval()
        skip_without_lengths(self.training_layer, lengths)
        warm_up(self.training_layer, self.inference_layer, shape, False, "float32", lengths)

    def time_forward(self, *params):
        run_forward(self.inference_layer, self.problem)

    def time_forward_backward(self, *params):
        forward_backward(self.training_layer, self.problem)


class RNNLengthsRatio:
    """fastrnn's time on a padded batch with uniform lengths over its time on the same batch
    at full length, both timed in one call; the lengths target is at most 0.65x."""

    params = [CELLS]
    param_names = ["cell"]
    unit = "x"

    def setup(self, cell):
        shape = LENGTHS_SHAPES[0]
        self.problems = [make_problem(shape, False, "float32", lengths) for lengths in ("uniform", "full")]
        self.training_layer = make_layer("fastrnn", cell, shape, 1, False, "float32")
        self.inference_layer = make_layer("fastrnn", cell, shape, 1, False, "float32").eval()
        skip_without_lengths(self.training_layer, "uniform")
        for lengths in ("uniform", "full"):
            warm_up(self.training_layer, self.inference_layer, shape, False, "float32", lengths)

    def _ratio(self, call: Callable[[Problem], object]) -> float:
        uniform, full = self.problems
        uniform_seconds, full_seconds = best_seconds_per_call([lambda: call(uniform), lambda: call(full)],
                                                              SPEEDUP_ROUNDS)
        return uniform_seconds / full_seconds

    def track_ratio_forward(self, cell):
        return self._ratio(lambda problem: run_forward(self.inference_layer, problem))

    def track_ratio_forward_backward(self, cell):
        return self._ratio(lambda problem: forward_backward(self.training_layer, problem))


class RNNMemory:
    """Peak resident memory of a process that runs one training step or one inference.

    The peak includes the interpreter, the imports and, for fastrnn, the loaded kernels:
    what a process using that backend costs, not only the arrays of the call.
    """

    params = [list(BACKENDS)]
    param_names = ["backend"]

    def setup(self, backend):
        self.problem = make_problem(MEMORY_SHAPE, False, "float32")
        self.training_layer = make_layer(backend, "rnn_tanh", MEMORY_SHAPE, MEMORY_NUM_LAYERS, False, "float32")
        self.inference_layer = make_layer(
            backend, "rnn_tanh", MEMORY_SHAPE, MEMORY_NUM_LAYERS, False, "float32"
        ).eval()
        warm_up(self.training_layer, self.inference_layer, MEMORY_SHAPE, False, "float32")

    def peakmem_training(self, backend):
        forward_backward(self.training_layer, self.problem)

    def peakmem_inference(self, backend):
        self.inference_layer(self.problem.x)
