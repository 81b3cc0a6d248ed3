"""``python -m fastrnn bench``: fastrnn against its peers, one process, interleaved timings.

Every implementation of a shape is timed in the same rounds, alternating, and the median
per implementation is kept, so ratios hold even on a noisy machine.

``--lengths uniform`` gives every sequence of the batch its own length, drawn from a fixed
seed, and every peer that can runs those lengths (torch through its PackedSequence path).
fastrnn is then also timed on the same batch at full length, in the same rounds, so the
table shows what the lengths save next to the speedup over the peers.

``--api torch`` times torch modules instead of layers: ``fastrnn.torch``'s against
``torch.nn``'s, holding the same weights and taking the same input tensor, for inference
and for one training step, and measures what ``fastrnn.torch`` adds per call to fastrnn's
NumPy layer.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ._bench_peers import (
    CELL_TITLES,
    CELLS,
    GATES,
    LAYER_CLASSES,
    PEER_BUILDERS,
    TORCH_API_MODULES,
    Case,
    PeerUnavailable,
    Timers,
    available_cores,
    build_case_layer,
    layer_timers,
    missing_modules,
    torch_api_modules,
    torch_api_timers,
)

# (T, B, I, H, layers, bidirectional): the speed targets' grid.
DEFAULT_SHAPES = (
    (100, 1, 32, 64, 1, False),
    (1000, 1, 16, 32, 1, False),
    (100, 8, 64, 128, 1, False),
    (256, 16, 64, 64, 1, False),
    (100, 16, 64, 128, 2, True),
    (100, 32, 128, 256, 1, False),
    (50, 64, 512, 1024, 1, False),
)
# With lengths: the lengths target's shape, and a stacked bidirectional one, where the
# reverse direction starts at each sequence's own last step. A batch of one sequence says
# little about lengths, so the default grid's B=1 shapes are left out.
DEFAULT_LENGTHS_SHAPES = (
    (100, 64, 128, 256, 1, False),
    (100, 16, 64, 128, 2, True),
)
PEERS = tuple(PEER_BUILDERS)
DEFAULT_PEERS = ("numpy", "torch", "jax")
# ``--lengths``: every sequence runs all T steps, or each one a length drawn uniformly from [1, T].
LENGTHS_MODES = ("full", "uniform")
# The lengths are drawn from their own generator, so that they do not depend on the data.
LENGTHS_SEED = 0
# The key under which fastrnn at full length is timed next to fastrnn with the lengths.
FULL_LENGTH = "fastrnn full length"
# ``--api``: what is timed. numpy: fastrnn's layers against the peers; torch: fastrnn.torch's
# modules against torch.nn's.
APIS = ("numpy", "torch")
# The shape at which fastrnn.torch's per-call overhead over the NumPy layer is measured: small
# enough that the kernels take about 0.1 ms, so the adapter's microseconds show.
OVERHEAD_SHAPE = (100, 1, 32, 64, 1, False)
# Untimed pairs before the overhead is timed: for about a second after the modules were
# made, the LSTM module's overhead measured 38 µs, and 15-16 µs from then on (AMD EPYC
# with AVX-512, in a fresh process).
OVERHEAD_SETTLE_SECONDS = 1.0


def draw_lengths(mode: str, steps: int, batch: int, seed: int = LENGTHS_SEED) -> np.ndarray | None:
    """The batch's sequence lengths for a ``--lengths`` mode: None for "full"; for "uniform",
    B int64 values drawn uniformly from [1, ``steps``] in no particular order, the same for
    every call with the same arguments."""
    if mode == "full":
        return None
    if mode == "uniform":
        return np.random.default_rng(seed).integers(1, steps, size=batch, endpoint=True, dtype=np.int64)
    raise ValueError(f"unknown lengths mode {mode!r}; expected one of {list(LENGTHS_MODES)}")


@dataclass
class ShapeResult:
    shape: tuple
    fastrnn_forward_ms: float
    fastrnn_forward_backward_ms: float
    peers: dict = field(default_factory=dict)  # name -> {"forward_ms": .., "forward_backward_ms": .. or None}
    speedup_forward: float | None = None
    speedup_forward_backward: float | None = None
    gflops_forward_backward: float = 0.0
    percent_of_gemm: float = 0.0  # forward+backward's, of gemm_gflops_forward_backward
    gflops_forward: float = 0.0
    percent_of_gemm_forward: float = 0.0  # of gemm_gflops_forward
    # The GEMM reference timed in the same rounds as the shape's forward and its
    # forward+backward (``GEMM_REFERENCE``), so that a drift of the machine's speed moves
    # both figures of a percentage alike.
    gemm_gflops_forward: float = 0.0
    gemm_gflops_forward_backward: float = 0.0
    # With lengths: the batch's lengths, the share of its T*B steps they keep, and fastrnn's
    # times on the same batch at full length with the ratio (lengths / full length).
    lengths: list[int] | None = None
    steps_run: float = 1.0
    fastrnn_full_length_forward_ms: float | None = None
    fastrnn_full_length_forward_backward_ms: float | None = None
    ratio_to_full_length_forward: float | None = None
    ratio_to_full_length_forward_backward: float | None = None


@dataclass
class TorchApiResult:
    """One shape of ``--api torch``: both modules' inference and training step times (ms)."""

    shape: tuple
    fastrnn_torch_inference_ms: float
    fastrnn_torch_training_step_ms: float
    torch_nn_inference_ms: float
    torch_nn_training_step_ms: float
    speedup_inference: float  # torch.nn / fastrnn.torch
    speedup_training_step: float
    gflops_training_step: float = 0.0  # fastrnn.torch's
    percent_of_gemm: float = 0.0  # of gemm_gflops, the GEMM reference timed in the training step's rounds
    gemm_gflops: float = 0.0
    lengths: list[int] | None = None
    steps_run: float = 1.0


def shape_label(shape) -> str:
    steps, batch, inputs, hidden, layers, bidirectional = shape
    return f"({steps},{batch},{inputs},{hidden},{layers},{'bi' if bidirectional else 'uni'})"


def forward_flops(shape, cell: str, proj_size: int = 0) -> float:
    """G x 2*T*B*(I*H + H*H) per layer-direction, G the cell's gate count (1, LSTM 4, GRU 3).

    With an LSTM projection to P the recurrent product is G x 2*T*B*P*H, layers above the
    first take D*P inputs, and the projection itself adds 2*T*B*H*P.
    """
    steps, batch, inputs, hidden, layers, bidirectional = shape
    directions = 2 if bidirectional else 1
    output = proj_size or hidden
    total = 0.0
    for layer in range(layers):
        features = inputs if layer == 0 else directions * output
        per_step = GATES[cell] * (features * hidden + output * hidden) + hidden * proj_size
        total += directions * 2.0 * steps * batch * per_step
    return total


def forward_backward_flops(shape, cell: str, proj_size: int = 0) -> float:
    """Three times the forward's: the forward, the input gradients, the weight gradients."""
    return 3 * forward_flops(shape, cell, proj_size)


def _data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.steps, case.batch, case.input_size)).astype(case.dtype)
    grad = rng.standard_normal((case.steps, case.batch, case.directions * case.output_size)).astype(case.dtype)
    return x, grad


def _peer_available(name: str) -> str | None:
    """None when the peer can run, else the reason it is skipped."""
    missing = missing_modules(name)
    return f"{name} is not installed (no module {', '.join(missing)})" if missing else None


def build_implementations(case: Case, peers: list[str], notes: list[str]) -> dict[str, Timers]:
    """fastrnn and every peer that can run the case, all holding fastrnn's seeded weights.

    A case with lengths also has fastrnn at full length on the same data, under
    ``FULL_LENGTH``. A peer that cannot run the case is left out, with the reason added to
    ``notes`` once.
    """
    import fastrnn

    layer = build_case_layer(fastrnn, case)
    weights = layer.state_dict()
    x, grad = _data(case)
    implementations = {"fastrnn": layer_timers(layer, x, grad, case.lengths_array)}
    if case.lengths is not None:
        implementations[FULL_LENGTH] = layer_timers(layer, x, grad)
    for peer in peers:
        try:
            implementations[peer] = PEER_BUILDERS[peer](case, weights, x, grad)
        except PeerUnavailable as reason:
            note = f"skipped peer {peer}: {reason}"
            if note not in notes:
                notes.append(note)
    return implementations


# The GEMM reference's name among the timed functions of a shape's rounds.
GEMM_REFERENCE = "gemm reference"
GEMM_SIZE = 1024


def gemm_timer(dtype, size: int = GEMM_SIZE) -> Callable[[], None]:
    """One call of NumPy's (size x size) GEMM, into a kept output, for ``interleaved_medians``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty((size, size), dtype=dtype)

    def multiply() -> None:
        np.matmul(a, b, out=out)

    return multiply


def gemm_rate(seconds: float, size: int = GEMM_SIZE) -> float:
    """GFLOP/s of one (size x size) GEMM call that took ``seconds``."""
    return 2.0 * size**3 / seconds / 1e9


def gemm_range(rates: list[float]) -> str:
    """The per-shape GEMM references of a table, as its footer quotes them."""
    low, high = min(rates), max(rates)
    return f"{low:.0f} GFLOP/s" if round(low) == round(high) else f"{low:.0f}-{high:.0f} GFLOP/s"


# Each block starts with this many seconds of untimed calls. By then, thread pools left
# spinning by the previous implementation (OpenBLAS spins for about 0.1 s after a call)
# have gone to sleep, and the machine has settled into the implementation's own steady
# state (idle cores on virtual machines wake slowly after a pause), so each one is timed
# the way it runs on its own in a loop.
SETTLE_SECONDS = 0.2


def interleaved_medians(
    functions: dict[str, Callable[[], None]], budget: float, settle: float = SETTLE_SECONDS
) -> dict[str, float]:
    """Median seconds per call, timing the functions in alternating blocks of calls.

    Each round gives every function one block: ``settle`` seconds (at least one call) of
    untimed calls, then ``calls`` timed ones. Alternating the blocks keeps the comparison
    fair when the machine's speed drifts.
    """
    for function in functions.values():
        function()  # warm caches and compiled code
    probe = {}
    for name, function in functions.items():
        start = time.perf_counter()
        function()
        probe[name] = time.perf_counter() - start
    # About 20 ms of timed calls per block, at least 3; rounds share the budget.
    calls = {name: int(min(max(0.02 / max(seconds, 1e-9), 3), 200)) for name, seconds in probe.items()}
    per_round = sum(probe[name] * (calls[name] + 1) for name in functions)
    rounds = int(min(max(budget / max(per_round, 1e-9), 3), 6))
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            settled = time.perf_counter() + settle
            function()
            while time.perf_counter() < settled:
                function()
            for _ in range(calls[name]):
                start = time.perf_counter()
                function()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def run(
    shapes, peers, dtype, cell, budget: float, progress=sys.stderr, settle: float = SETTLE_SECONDS,
    lengths: str = "full", proj_size: int = 0,
) -> tuple[list[ShapeResult], float, list[str]]:
    """Time fastrnn and the peers on each shape; ``lengths`` is one of ``LENGTHS_MODES``,
    ``proj_size`` an LSTM's projection (0: none)."""
    notes = []
    active = []
    for peer in peers:
        reason = _peer_available(peer)
        if reason:
            notes.append(f"skipped peer {peer}: {reason}")
        else:
            active.append(peer)
    # The ceiling is timed in every shape's rounds, beside fastrnn and the peers: a machine
    # whose speed drifts (virtual machines do, by 10-20% within minutes) then gives each
    # percentage of the ceiling from one stretch of time.
    reference = gemm_timer(dtype)
    results = []
    for index, shape in enumerate(shapes, 1):
        print(f"[{index}/{len(shapes)}] {shape_label(shape)} ...", file=progress, flush=True)
        steps, batch = shape[:2]
        case_lengths = draw_lengths(lengths, steps, batch)
        made = build_implementations(Case.from_shape(cell, shape, dtype, case_lengths, proj_size), active, notes)
        forward = interleaved_medians(
            {**{name: timers[0] for name, timers in made.items()}, GEMM_REFERENCE: reference}, budget, settle
        )
        both = interleaved_medians(
            {**{name: timers[1] for name, timers in made.items() if timers[1] is not None},
             GEMM_REFERENCE: reference},
            budget, settle,
        )
        result = ShapeResult(shape, forward["fastrnn"] * 1e3, both["fastrnn"] * 1e3)
        result.gemm_gflops_forward = gemm_rate(forward[GEMM_REFERENCE])
        result.gemm_gflops_forward_backward = gemm_rate(both[GEMM_REFERENCE])
        if case_lengths is not None:
            result.lengths = case_lengths.tolist()
            result.steps_run = float(case_lengths.sum()) / (steps * batch)
            result.fastrnn_full_length_forward_ms = forward[FULL_LENGTH] * 1e3
            result.fastrnn_full_length_forward_backward_ms = both[FULL_LENGTH] * 1e3
            result.ratio_to_full_length_forward = forward["fastrnn"] / forward[FULL_LENGTH]
            result.ratio_to_full_length_forward_backward = both["fastrnn"] / both[FULL_LENGTH]
        peers_run = [name for name in made if name not in ("fastrnn", FULL_LENGTH, GEMM_REFERENCE)]
        for peer in peers_run:
            result.peers[peer] = {
                "forward_ms": forward[peer] * 1e3,
                "forward_backward_ms": both[peer] * 1e3 if peer in both else None,
            }
        if peers_run:
            result.speedup_forward = min(forward[p] for p in peers_run) / forward["fastrnn"]
        if any(p in both for p in peers_run):
            result.speedup_forward_backward = min(both[p] for p in peers_run if p in both) / both["fastrnn"]
        # Only the steps within the lengths are work: the padding past them is not computed.
        result.gflops_forward = forward_flops(shape, cell, proj_size) * result.steps_run / forward["fastrnn"] / 1e9
        result.gflops_forward_backward = (
            forward_backward_flops(shape, cell, proj_size) * result.steps_run / both["fastrnn"] / 1e9
        )
        result.percent_of_gemm_forward = 100.0 * result.gflops_forward / result.gemm_gflops_forward
        result.percent_of_gemm = 100.0 * result.gflops_forward_backward / result.gemm_gflops_forward_backward
        results.append(result)
    gemm = max(max(r.gemm_gflops_forward, r.gemm_gflops_forward_backward) for r in results) if results else 0.0
    return results, gemm, notes


def run_torch_api(
    shapes, dtype, cell, budget: float, progress=sys.stderr, settle: float = SETTLE_SECONDS,
    lengths: str = "full",
) -> tuple[list[TorchApiResult], float]:
    """Time fastrnn.torch's module against torch.nn's on each shape, inference and a training
    step, with the same weights and input; returns the results and the GEMM reference."""
    import fastrnn

    reference = gemm_timer(dtype)  # timed in the training step's rounds, as in ``run``
    results = []
    fastrnn_torch, torch_nn = TORCH_API_MODULES
    for index, shape in enumerate(shapes, 1):
        print(f"[{index}/{len(shapes)}] {shape_label(shape)} ...", file=progress, flush=True)
        steps, batch = shape[:2]
        case_lengths = draw_lengths(lengths, steps, batch)
        case = Case.from_shape(cell, shape, dtype, case_lengths)
        # fastrnn's seeded weights and the bench's data, as the NumPy table's fastrnn runs.
        weights = build_case_layer(fastrnn, case).state_dict()
        made = torch_api_timers(case, weights, _data(case)[0])
        inference = interleaved_medians({name: timers[0] for name, timers in made.items()}, budget, settle)
        training = interleaved_medians(
            {**{name: timers[1] for name, timers in made.items()}, GEMM_REFERENCE: reference}, budget, settle
        )
        result = TorchApiResult(
            shape,
            inference[fastrnn_torch] * 1e3, training[fastrnn_torch] * 1e3,
            inference[torch_nn] * 1e3, training[torch_nn] * 1e3,
            speedup_inference=inference[torch_nn] / inference[fastrnn_torch],
            speedup_training_step=training[torch_nn] / training[fastrnn_torch],
        )
        if case_lengths is not None:
            result.lengths = case_lengths.tolist()
            result.steps_run = float(case_lengths.sum()) / (steps * batch)
        useful_flops = forward_backward_flops(shape, cell) * result.steps_run
        result.gflops_training_step = useful_flops / training[fastrnn_torch] / 1e9
        result.gemm_gflops = gemm_rate(training[GEMM_REFERENCE])
        result.percent_of_gemm = 100.0 * result.gflops_training_step / result.gemm_gflops
        results.append(result)
    gemm = max(r.gemm_gflops for r in results) if results else 0.0
    return results, gemm


def paired_difference_seconds(baseline: Callable[[], None], candidate: Callable[[], None], budget: float,
                              settle: float = SETTLE_SECONDS) -> float:
    """The median over many back-to-back pairs of calls of ``candidate``'s time minus ``baseline``'s.

    For a difference of a few microseconds between calls of a few hundred: two medians
    taken in separate blocks each carry the machine's drift between the blocks, which on
    the project's virtual machines moved the adapter's overhead at (100,1,32,64) between
    -1 and 51 µs from one run to the next, while the median of paired differences stayed
    within 1 µs. The order within a pair alternates, so that neither side always runs on
    caches the other has just warmed. Pairs run for ``budget`` seconds (at least 200 of
    them), after ``settle`` seconds of untimed pairs.
    """
    clock = time.perf_counter
    settled = clock() + settle
    baseline()
    candidate()
    while clock() < settled:
        baseline()
        candidate()
    differences = []
    stop = clock() + budget
    while len(differences) < 200 or clock() < stop:
        candidate_first = len(differences) % 2 == 0
        first, second = (candidate, baseline) if candidate_first else (baseline, candidate)
        start = clock()
        first()
        middle = clock()
        second()
        first_seconds, second_seconds = middle - start, clock() - middle
        difference = first_seconds - second_seconds
        differences.append(difference if candidate_first else -difference)
    return statistics.median(differences)


def adapter_overhead_seconds(cell: str, dtype, budget: float, settle: float = SETTLE_SECONDS) -> float:
    """What fastrnn.torch adds to each call of fastrnn's NumPy layer, in seconds.

    At :data:`OVERHEAD_SHAPE`: the fastrnn.torch module's forward under ``torch.no_grad()``
    against the fastrnn layer's forward in eval mode, on the same weights and data, as the
    median difference of back-to-back pairs of calls (``paired_difference_seconds``). Both
    run the same inference kernels, so the difference is the adapter's argument checks and
    conversions. Grad mode is switched off once around all the pairs: entering
    ``torch.no_grad()`` (a few microseconds) is the caller's cost, the same with torch.nn's
    modules.
    """
    import torch

    import fastrnn

    case = Case.from_shape(cell, OVERHEAD_SHAPE, dtype)
    layer = build_case_layer(fastrnn, case).eval()
    module = torch_api_modules(case, layer.state_dict())[TORCH_API_MODULES[0]].eval()
    x = _data(case)[0]
    x_tensor = torch.from_numpy(x)

    def numpy_layer():
        layer(x)

    def torch_module():
        module(x_tensor)

    with torch.no_grad():
        return paired_difference_seconds(numpy_layer, torch_module, budget, max(settle, OVERHEAD_SETTLE_SECONDS))


def overhead_line(cell: str, overhead_seconds: float) -> str:
    """The sentence that reports :func:`adapter_overhead_seconds`."""
    name = LAYER_CLASSES[cell]
    return (f"fastrnn.torch overhead per call at {shape_label(OVERHEAD_SHAPE)}: {overhead_seconds * 1e6:.1f} µs "
            f"(median over back-to-back pairs of calls of fastrnn.torch.{name} under torch.no_grad(), entered once, "
            f"minus fastrnn.{name} in eval mode, same weights and data).")


def _milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _times(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table whose columns are padded to their widest cell."""
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    return lines


def format_table(results: list[ShapeResult], peers: list[str], gemm: float) -> str:
    """A Markdown table; results run with lengths also get fastrnn's full-length columns."""
    with_lengths = any(r.lengths is not None for r in results)
    header = ["shape (T,B,I,H,L,dir)", "fastrnn fwd", "fastrnn f+b"]
    if with_lengths:
        header += ["steps run", "full-length fwd", "full-length f+b", "lengths/full fwd", "lengths/full f+b"]
    for peer in peers:
        header += [f"{peer} fwd", f"{peer} f+b"]
    header += ["speedup fwd", "speedup f+b", "GFLOP/s fwd", "% of gemm fwd", "GFLOP/s f+b", "% of gemm f+b"]
    rows = []
    for r in results:
        row = [shape_label(r.shape), f"{r.fastrnn_forward_ms:.3f}", f"{r.fastrnn_forward_backward_ms:.3f}"]
        if with_lengths:
            row += [
                f"{100 * r.steps_run:.0f}%",
                _milliseconds(r.fastrnn_full_length_forward_ms),
                _milliseconds(r.fastrnn_full_length_forward_backward_ms),
                _times(r.ratio_to_full_length_forward),
                _times(r.ratio_to_full_length_forward_backward),
            ]
        for peer in peers:
            timing = r.peers.get(peer, {})
            row += [_milliseconds(timing.get("forward_ms")), _milliseconds(timing.get("forward_backward_ms"))]
        row += [
            _times(r.speedup_forward),
            _times(r.speedup_forward_backward),
            f"{r.gflops_forward:.1f}",
            f"{r.percent_of_gemm_forward:.0f}%",
            f"{r.gflops_forward_backward:.1f}",
            f"{r.percent_of_gemm:.0f}%",
        ]
        rows.append(row)
    lines = _markdown_table(header, rows)
    rates = [rate for r in results for rate in (r.gemm_gflops_forward, r.gemm_gflops_forward_backward)]
    footer = ("\nTimes in ms (median over interleaved blocks of calls). Speedup = fastest peer / fastrnn. "
              f"% of gemm: of NumPy's {GEMM_SIZE}^3 GEMM, timed in the same rounds as each shape's forward "
              f"and its forward+backward: {gemm_range(rates or [gemm])} in this run.")
    forward_only = [
        peer for peer in peers
        if any(peer in r.peers and r.peers[peer]["forward_backward_ms"] is None for r in results)
    ]
    if forward_only:
        footer += f" Forward only, left out of the f+b speedup: {', '.join(forward_only)}."
    if with_lengths:
        footer += (" fastrnn and the peers ran each sequence for its own length (torch: pack_padded_sequence, "
                   "the layer, pad_packed_sequence); steps run = sum(lengths) / (T*B); full-length = fastrnn "
                   "on the same batch without lengths, timed in the same rounds; lengths/full = fastrnn's time "
                   "with the lengths / at full length. GFLOP/s counts the steps run only.")
    lines.append(footer)
    return "\n".join(lines)


def format_torch_api_table(results: list[TorchApiResult], gemm: float) -> str:
    """The Markdown table of ``--api torch``; results run with lengths also get "steps run"."""
    with_lengths = any(r.lengths is not None for r in results)
    header = ["shape (T,B,I,H,L,dir)"] + (["steps run"] if with_lengths else [])
    for name in TORCH_API_MODULES:
        header += [f"{name} inference", f"{name} train step"]
    header += ["speedup inference", "speedup train step", "GFLOP/s train step", "% of gemm"]
    rows = []
    for r in results:
        row = [shape_label(r.shape)] + ([f"{100 * r.steps_run:.0f}%"] if with_lengths else [])
        row += [
            f"{r.fastrnn_torch_inference_ms:.3f}", f"{r.fastrnn_torch_training_step_ms:.3f}",
            f"{r.torch_nn_inference_ms:.3f}", f"{r.torch_nn_training_step_ms:.3f}",
            _times(r.speedup_inference), _times(r.speedup_training_step),
            f"{r.gflops_training_step:.1f}", f"{r.percent_of_gemm:.0f}%",
        ]
        rows.append(row)
    lines = _markdown_table(header, rows)
    footer = ("\nTimes in ms (median over interleaved blocks of calls). Inference: `module(x)` in eval mode under "
              "`torch.no_grad()`. Train step: the parameters' and x's gradients set to None, then "
              "`out, _ = module(x); out.sum().backward()` in training mode, x requiring grad. Both modules hold "
              "the same weights and take the same input tensor. Speedup = torch.nn / fastrnn.torch; GFLOP/s is "
              f"fastrnn.torch's train step; % of gemm is of NumPy's {GEMM_SIZE}^3 GEMM, timed in the same rounds "
              f"as each shape's train steps: {gemm_range([r.gemm_gflops for r in results] or [gemm])} in this run.")
    if with_lengths:
        footer += (" Both modules ran each sequence for its own length: pack_padded_sequence(x, lengths, "
                   "enforce_sorted=False), the module, pad_packed_sequence, all timed; steps run = sum(lengths) / "
                   "(T*B). GFLOP/s counts the steps run only.")
    lines.append(footer)
    return "\n".join(lines)


def _plot_speedups(path: str, labels: list[str], bars: dict[str, list[float]], ylabel: str, title: str) -> None:
    """A PNG of side-by-side speedup bars per shape, ``bars`` mapping each legend entry to its values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = np.arange(len(labels))
    figure, axis = plt.subplots(figsize=(10, 4.5))
    for offset, (legend, values) in zip((-0.2, 0.2), bars.items(), strict=True):
        axis.bar(positions + offset, values, 0.4, label=legend)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks(positions, labels, rotation=20, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _lengths_in_title(results) -> str:
    return ", lengths uniform in [1, T]" if any(r.lengths is not None for r in results) else ""


def plot(results: list[ShapeResult], path: str, cell: str) -> None:
    _plot_speedups(
        path, [shape_label(r.shape) for r in results],
        {"forward": [r.speedup_forward or 0 for r in results],
         "forward+backward": [r.speedup_forward_backward or 0 for r in results]},
        "speedup over fastest peer (x)",
        f"fastrnn vs the fastest CPU peer, {CELL_TITLES[cell]}{_lengths_in_title(results)}",
    )


def plot_torch_api(results: list[TorchApiResult], path: str, cell: str) -> None:
    _plot_speedups(
        path, [shape_label(r.shape) for r in results],
        {"inference": [r.speedup_inference for r in results],
         "training step": [r.speedup_training_step for r in results]},
        "speedup over torch.nn (x)",
        f"fastrnn.torch vs torch.nn, {CELL_TITLES[cell]}{_lengths_in_title(results)}",
    )


README_START = "<!-- bench-table:start -->"
README_END = "<!-- bench-table:end -->"


def readme_markers(cell: str = "rnn_tanh", lengths: str = "full", api: str = "numpy") -> tuple[str, str]:
    """The markers around one cell's table: the Elman cell's full-length ones are the plain
    ones; a table with lengths has its own, ``<!-- bench-table:CELL:lengths-MODE:start -->``,
    and ``--api torch`` tables theirs, ``<!-- bench-table:CELL:api-torch[:lengths-MODE]:start -->``."""
    if api != "numpy":
        prefix = f"<!-- bench-table:{cell}:api-{api}" + ("" if lengths == "full" else f":lengths-{lengths}")
        return f"{prefix}:start -->", f"{prefix}:end -->"
    if lengths != "full":
        prefix = f"<!-- bench-table:{cell}:lengths-{lengths}"
        return f"{prefix}:start -->", f"{prefix}:end -->"
    if cell in ("rnn_tanh", "rnn_relu"):
        return README_START, README_END
    return f"<!-- bench-table:{cell}:start -->", f"<!-- bench-table:{cell}:end -->"


def cpu_description() -> str:
    """The CPU's model name and the widest vector ISA numba compiles for on it."""
    import llvmlite.binding as llvm

    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    features = llvm.get_host_cpu_features()
    isa = "AVX-512" if features.get("avx512f") else "AVX2, no AVX-512" if features.get("avx2") else "no AVX2"
    return f"{model} ({llvm.get_host_cpu_name()}, {isa})"


def _machine_line(with_torch: bool = False) -> str:
    """The CPU, its cores and the versions that made a table (torch's too where it is timed itself)."""
    import numba

    versions = f"numpy {np.__version__}, numba {numba.__version__}"
    if with_torch:
        import torch

        versions += f", torch {torch.__version__}"
    return (f"{cpu_description()}, {available_cores()} cores; {versions}; "
            "BLAS variables unset (`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`).")


def _marked_block(path: str, text: str, start_marker: str, end_marker: str) -> tuple[int, int]:
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"{path} needs the markers {start_marker!r} and {end_marker!r}, in that order")
    return start, end


def check_readme(path: str, cell: str = "rnn_tanh", lengths: str = "full", api: str = "numpy") -> None:
    """Raise ValueError unless ``update_readme`` can write the cell's table into the file."""
    with open(path) as handle:
        _marked_block(path, handle.read(), *readme_markers(cell, lengths, api))


def update_readme(
    path: str, command: str, table: str, cell: str = "rnn_tanh", lengths: str = "full", api: str = "numpy"
) -> None:
    """Put the command and its table between the bench-table markers of the cell, lengths
    mode and API in a Markdown file."""
    start_marker, end_marker = readme_markers(cell, lengths, api)
    with open(path) as handle:
        text = handle.read()
    start, end = _marked_block(path, text, start_marker, end_marker)
    block = f"{start_marker}\nProduced by `{command}`:\n\n{table}\n"
    with open(path, "w") as handle:
        handle.write(text[:start] + block + text[end:])


def parse_shapes(text: str) -> list[tuple]:
    """'T,B,I,H[,L[,bi|uni]];...' -> shape tuples."""
    shapes = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        fields = [f.strip() for f in item.strip("()").split(",")]
        if not 4 <= len(fields) <= 6:
            raise ValueError(f"expected a shape 'T,B,I,H[,layers[,bi|uni]]', got {item!r}")
        numbers = [int(f) for f in fields[:4]]
        layers = int(fields[4]) if len(fields) > 4 else 1
        direction = fields[5] if len(fields) > 5 else "uni"
        if direction not in ("bi", "uni"):
            raise ValueError(f"expected direction 'bi' or 'uni', got {direction!r} in {item!r}")
        shapes.append((*numbers, layers, direction == "bi"))
    return shapes


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2)
    print(f"wrote {path}")


def _command_options(args) -> str:
    """The options after ``--peers`` (or ``--api torch``) in the command a README table names."""
    options = f" --dtype {args.dtype} --cell {args.cell}"
    if args.lengths != "full":
        options += f" --lengths {args.lengths}"
    if getattr(args, "proj_size", 0):
        options += f" --proj-size {args.proj_size}"
    if args.shapes:
        options += f' --shapes "{args.shapes}"'
    return options


def _lengths_title(lengths: str) -> str:
    return "" if lengths == "full" else f", lengths uniform in [1, T] (--lengths {lengths}, seed {LENGTHS_SEED})"


def main(args) -> int:
    if os.environ.get("OPENBLAS_CORETYPE"):
        print(
            f"warning: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} forces OpenBLAS onto slower "
            "kernels; unset it (and OPENBLAS_L2_SIZE) to benchmark: "
            "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastrnn bench",
            file=sys.stderr,
        )
    dtype = np.dtype(args.dtype).type
    api = args.api
    if api not in APIS:
        raise SystemExit(f"unknown api {api!r}; expected one of {list(APIS)}")
    if args.cell not in CELLS:
        raise SystemExit(f"unknown cell {args.cell!r}; expected one of {list(CELLS)}")
    if args.lengths not in LENGTHS_MODES:
        raise SystemExit(f"unknown lengths mode {args.lengths!r}; expected one of {list(LENGTHS_MODES)}")
    if api == "torch":
        # Refused rather than ignored, so that nobody reads a table as covering peers it left out.
        if args.peers is not None:
            raise SystemExit("--peers does not apply with --api torch, which times fastrnn.torch against torch.nn "
                             "only; leave --peers out")
        if missing_modules("torch"):
            raise SystemExit("--api torch needs PyTorch, which is not installed: pip install torch")
        peers = []
    else:
        peers = [p.strip() for p in (args.peers or ",".join(DEFAULT_PEERS)).split(",") if p.strip()]
        unknown = [p for p in peers if p not in PEERS]
        if unknown:
            raise SystemExit(f"unknown peers {unknown}; expected some of {list(PEERS)}")
    if args.shapes:
        shapes = parse_shapes(args.shapes)
    else:
        shapes = list(DEFAULT_SHAPES if args.lengths == "full" else DEFAULT_LENGTHS_SHAPES)
    proj_size = getattr(args, "proj_size", 0)
    if proj_size:
        if args.cell != "lstm" or api != "numpy":
            raise SystemExit(f"--proj-size is for --cell lstm with --api numpy, got --cell {args.cell} "
                             f"--api {api}")
        if args.readme:
            raise SystemExit("--readme has no table for --proj-size; leave one of them out")
        too_small = [shape_label(shape) for shape in shapes if not 0 < proj_size < shape[3]]
        if too_small:
            raise SystemExit(f"--proj-size {proj_size} must be over 0 and under each shape's hidden size H, "
                             f"which it is not for {', '.join(too_small)}")
    if args.readme:
        # Before the timing, which takes minutes: each lengths mode and API has markers of its own.
        try:
            check_readme(args.readme, args.cell, args.lengths, api)
        except (OSError, ValueError) as error:
            raise SystemExit(f"--readme: {error}") from error
    if api == "torch":
        return _main_torch_api(args, dtype, shapes)
    results, gemm, notes = run(shapes, peers, dtype, args.cell, args.budget, lengths=args.lengths,
                               proj_size=proj_size)
    for note in notes:
        print(note)
    shown = [p for p in peers if any(p in r.peers for r in results)]
    projection = f", proj_size {proj_size} (--proj-size {proj_size})" if proj_size else ""
    print(f"\nfastrnn bench: {CELL_TITLES[args.cell]} (--cell {args.cell}){projection}, {np.dtype(dtype).name}"
          f"{_lengths_title(args.lengths)}, forward and forward+backward\n")
    table = format_table(results, shown, gemm)
    print(table)
    return _write_outputs(
        args, api, dtype, gemm, results, {"proj_size": proj_size},
        f"python -m fastrnn bench --peers {','.join(peers)}",
        table + f"\n\n{_machine_line()}", plot,
    )


def _write_outputs(args, api: str, dtype, gemm: float, results: list, extra: dict, command: str, readme_block: str,
                   plot_function) -> int:
    """What ``--json``, ``--readme`` and ``--plot`` ask for, once the tables are printed; the exit status."""
    if args.json:
        _write_json(args.json, {"api": api, "cell": args.cell, "dtype": np.dtype(dtype).name,
                                "lengths": args.lengths, "gemm_gflops": gemm, **extra,
                                "results": [asdict(r) for r in results]})
    if args.readme:
        update_readme(args.readme, command + _command_options(args), readme_block, args.cell, args.lengths, api)
        print(f"updated {args.readme}")
    if args.plot:
        try:
            plot_function(results, args.plot, args.cell)
        except ImportError:
            print("--plot needs matplotlib: pip install 'fastrnn[plot]'", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}")
    return 0


def _main_torch_api(args, dtype, shapes: list[tuple]) -> int:
    """``--api torch``: the table of fastrnn.torch against torch.nn, and the adapter's overhead."""
    # sys.stderr as it is now, not as it was when the module was imported.
    results, gemm = run_torch_api(shapes, dtype, args.cell, args.budget, progress=sys.stderr, lengths=args.lengths)
    overhead = adapter_overhead_seconds(args.cell, dtype, args.budget)
    print(f"\nfastrnn bench --api torch: {CELL_TITLES[args.cell]} (--cell {args.cell}), {np.dtype(dtype).name}"
          f"{_lengths_title(args.lengths)}, fastrnn.torch against torch.nn, inference and a training step\n")
    table = format_torch_api_table(results, gemm)
    print(table)
    print(f"\n{overhead_line(args.cell, overhead)}")
    extra = {"adapter_overhead_us": overhead * 1e6, "overhead_shape": list(OVERHEAD_SHAPE)}
    block = f"{table}\n\n{overhead_line(args.cell, overhead)}\n\n{_machine_line(with_torch=True)}"
    return _write_outputs(args, "torch", dtype, gemm, results, extra, "python -m fastrnn bench --api torch", block,
                          plot_torch_api)
