"""Command line: ``python -m fastrnn`` (demo) and ``python -m fastrnn bench``."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .bench import APIS, CELLS, DEFAULT_LENGTHS_SHAPES, DEFAULT_PEERS, LENGTHS_MODES, OVERHEAD_SHAPE, PEERS, shape_label


def demo(steps: int = 100, batch: int = 16, input_size: int = 64, hidden_size: int = 128) -> int:
    """Forward and backward on a default shape, checked against the reference, timed against it."""
    from . import RNN, reference
    from .bench import interleaved_medians

    print(f"fastrnn demo: Elman RNN, tanh, float32, T={steps} B={batch} I={input_size} H={hidden_size}, "
          "2 layers, bidirectional")
    rng = np.random.default_rng(0)
    fast = RNN(input_size, hidden_size, num_layers=2, bidirectional=True, seed=0)
    slow = reference.RNN(input_size, hidden_size, num_layers=2, bidirectional=True, seed=0)
    x = rng.standard_normal((steps, batch, input_size), dtype=np.float32)
    grad = rng.standard_normal((steps, batch, 2 * hidden_size), dtype=np.float32)

    start = time.perf_counter()
    output, _ = fast(x)
    grad_x, _ = fast.backward(grad)
    print(f"first call (compiles or loads the kernel cache): {time.perf_counter() - start:.2f} s")
    expected_output, _ = slow(x)
    expected_grad_x, _ = slow.backward(grad)
    output_error = float(np.abs(output - expected_output).max())
    grad_error = float(np.abs(grad_x - expected_grad_x).max())
    weight_error = max(float(np.abs(fast.grads[k] - slow.grads[k]).max()) for k in fast.grads)
    print(f"max |difference| vs fastrnn.reference: output {output_error:.1e}, grad_x {grad_error:.1e}, "
          f"parameter grads {weight_error:.1e}")

    def step(layer):
        def run():
            out, _ = layer(x)
            layer.backward(grad)
        return run

    # Timed as the bench times: alternating blocks, each settled first, so that the
    # NumPy reference's spinning BLAS threads are not charged to fastrnn.
    medians = interleaved_medians({"fastrnn": step(fast), "numpy": step(slow)}, budget=1.0)
    fast_time, slow_time = medians["fastrnn"], medians["numpy"]
    print(f"forward+backward: fastrnn {fast_time * 1e3:.2f} ms, NumPy reference {slow_time * 1e3:.2f} ms, "
          f"speedup {slow_time / fast_time:.1f}x")
    ok = output_error < 1e-4 and grad_error < 1e-4 and weight_error < 1e-3
    print("check:", "passed" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrnn", description="fastrnn demo and benchmarks")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("demo", help="forward+backward on a default shape, checked and timed (default)")
    bench = commands.add_parser("bench", help="time fastrnn against its peers on the default grid")
    bench.add_argument(
        "--api", default="numpy", choices=APIS,
        help="numpy: fastrnn's layers against the peers (default); torch: fastrnn.torch's modules against "
             "torch.nn's, same weights and input tensor, inference (no_grad) and a training step "
             "(out, _ = module(x); out.sum().backward()), plus fastrnn.torch's overhead per call over the NumPy "
             f"layer at {shape_label(OVERHEAD_SHAPE)}; --peers does not apply and is refused",
    )
    bench.add_argument(
        "--peers", default=None,
        help=f"comma-separated, some of {','.join(PEERS)} (ort: onnxruntime, forward only); "
             f"default {','.join(DEFAULT_PEERS)}; not with --api torch",
    )
    bench.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    bench.add_argument("--cell", default="rnn_tanh", help=f"one of {', '.join(CELLS)}")
    bench.add_argument("--shapes", help="'T,B,I,H[,layers[,bi|uni]];...' instead of the default grid")
    bench.add_argument(
        "--lengths", default="full", choices=LENGTHS_MODES,
        help="full: every sequence runs all T steps; uniform: each runs a length drawn uniformly from [1, T] "
             "(fixed seed), as do the peers that can (torch through pack_padded_sequence; not jax), and "
             "fastrnn is also timed at full length for the ratio (with --api torch: both modules take the batch "
             "through pack_padded_sequence, and nothing runs at full length); without --shapes it runs "
             f"{' and '.join(shape_label(shape) for shape in DEFAULT_LENGTHS_SHAPES)}",
    )
    bench.add_argument(
        "--proj-size", type=int, default=0,
        help="LSTM only: the output projection P (torch's proj_size), 0 < P < H for every shape; jax and ort "
             "have no such LSTM and are skipped; not with --api torch",
    )
    bench.add_argument("--budget", type=float, default=1.0, help="seconds of timing per shape and mode")
    bench.add_argument("--json", help="write the results to this JSON file")
    bench.add_argument("--plot", help="draw a PNG bar chart of the speedups (needs matplotlib)")
    bench.add_argument(
        "--readme", help="replace the table between the bench-table markers in this Markdown file (each cell, "
                         "lengths mode and API has its own, e.g. <!-- bench-table:lstm:api-torch:start -->)"
    )
    warmup = commands.add_parser("compile", help="compile every kernel variant ahead of time, into numba's cache")
    warmup.add_argument("--cell", help="comma-separated cells (rnn_tanh, lstm, gru); default: all")
    warmup.add_argument("--dtype", help="comma-separated dtypes (float32, float64); default: both")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "compile":
        from ._warmup import main as compile_main

        return compile_main(args.cell, args.dtype)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(args)
    return demo()
