"""``python -m fastrnn compile``: build every kernel variant ahead of time.

numba compiles a kernel the first time a call needs it and keeps the machine code in its
on-disk cache, so a container image or a CI cache that runs this once starts every later
process from the cache. The variants are each cell's kernels for each dtype, on the
calling thread and on numba's threads, in training (forward and backward, with equal and
unequal lengths) and inference.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TextIO

import numpy as np

# A cell kind per kernel module: rnn_relu shares rnn_tanh's kernels.
CELL_LAYERS = {"rnn_tanh": ("RNN", {}), "lstm": ("LSTM", {}), "gru": ("GRU", {})}
DTYPES = ("float32", "float64")


def variants(cells: Iterable[str], dtypes: Iterable[str]) -> list[tuple[str, str, bool]]:
    """(cell, dtype, threaded) for every build the given cells and dtypes can need."""
    return [(cell, dtype, threaded) for cell in cells for dtype in dtypes for threaded in (False, True)]


def _run_variant(cell: str, dtype: str, threaded: bool) -> None:
    import fastrnn
    from fastrnn import _stack

    name, options = CELL_LAYERS[cell]
    layer = getattr(fastrnn, name)(3, 4, num_layers=2, bidirectional=True, dtype=dtype, seed=0, **options)
    x = np.ones((3, 2, 3), dtype=dtype)
    threshold, threads = _stack.PARALLEL_RECURRENCE_WORK, fastrnn.get_num_threads()
    if threaded:
        # A tiny layer takes the threaded build only when the threshold lets it.
        _stack.PARALLEL_RECURRENCE_WORK = 0
        fastrnn.set_num_threads(max(2, threads))
    try:
        output, _ = layer(x)
        layer.backward(np.ones_like(output))
        # Unequal lengths: their backward has compiled code of its own.
        output, _ = layer(x, lengths=np.array([3, 1]))
        layer.backward(np.ones_like(output))
        layer.eval()
        layer(x)
    finally:
        _stack.PARALLEL_RECURRENCE_WORK = threshold
        fastrnn.set_num_threads(threads)


def compile_kernels(cells: Iterable[str], dtypes: Iterable[str], progress: TextIO = sys.stderr) -> float:
    """Compile (or load from the cache) every variant; returns the seconds it took."""
    todo = variants(cells, dtypes)
    start = time.perf_counter()
    interactive = progress.isatty()
    for done, (cell, dtype, threaded) in enumerate(todo):
        label = f"{cell} {dtype} {'threaded' if threaded else 'one thread'}"
        _report(progress, done, len(todo), label, start, interactive)
        _run_variant(cell, dtype, threaded)
    seconds = time.perf_counter() - start
    _report(progress, len(todo), len(todo), "done", start, interactive)
    if interactive:
        progress.write("\n")
    return seconds


def _report(progress: TextIO, done: int, total: int, label: str, start: float, interactive: bool) -> None:
    width = 24
    filled = width * done // max(total, 1)
    line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label} ({time.perf_counter() - start:.1f} s)"
    progress.write(("\r" + line.ljust(79)) if interactive else line + "\n")
    progress.flush()


def main(cells_text: str | None, dtypes_text: str | None) -> int:
    cells = _choices(cells_text, tuple(CELL_LAYERS), "cell", aliases={"rnn_relu": "rnn_tanh", "rnn": "rnn_tanh"})
    dtypes = _choices(dtypes_text, DTYPES, "dtype")
    seconds = compile_kernels(cells, dtypes)
    import numba

    print(f"compiled {len(variants(cells, dtypes))} variants in {seconds:.1f} s; numba's cache: "
          f"{numba.config.CACHE_DIR or 'next to each kernel file (__pycache__)'}")
    return 0


def _choices(text: str | None, allowed: tuple[str, ...], what: str, aliases: dict | None = None) -> list[str]:
    if not text:
        return list(allowed)
    chosen = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        item = (aliases or {}).get(item, item)
        if item not in allowed:
            raise SystemExit(f"unknown {what} {item!r}; expected some of {', '.join(allowed)}")
        if item not in chosen:
            chosen.append(item)
    return chosen
