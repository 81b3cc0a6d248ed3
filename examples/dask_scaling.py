"""How fastrnn's LSTM inference scales from one Dask worker to two on this machine.

    python examples/dask_scaling.py [--batch 4096 --steps 100 --input 64 --hidden 128 --chunk 256]

Each worker is its own process with one thread, held to one fastrnn thread by the
``FastrnnThreads(1)`` plugin. ``x`` is generated on the workers and kept there, and the
results stay on the workers too (``client.persist``), so the times are the computation
and Dask's scheduling, not moving 100 MB arrays to this process. One in-process call of
the same layer on the same batch, on one and on two fastrnn threads, is timed for scale.
Prints a Markdown table of median wall-clock times.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process_seconds(layer, x: np.ndarray, threads: int, repeats: int) -> float:
    import fastrnn

    fastrnn.set_num_threads(threads)
    layer(x)  # compiled, or read from numba's cache, before timing
    return median_seconds(lambda: layer(x), repeats)


def dask_seconds(layer, shape: tuple[int, int, int], chunk: int, workers: int, repeats: int) -> float:
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import fastrnn.dask

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.register_plugin(fastrnn.dask.FastrnnThreads(1))
        steps, batch, features = shape
        x = da.random.default_rng(0).standard_normal(shape, chunks=(steps, chunk, features), dtype=np.float32)
        x = client.persist(x)
        wait(x)

        def run() -> None:
            output, (h_n, c_n) = fastrnn.dask.forward(layer, x)
            results = client.persist([output, h_n, c_n])
            wait(results)
            del results  # released, so that the next run computes everything again

        run()  # every worker loads the kernels before timing
        return median_seconds(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=256, help="sequences per task")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import dask
    import numba

    import fastrnn

    layer = fastrnn.LSTM(args.input, args.hidden, seed=0).eval()
    shape = (args.steps, args.batch, args.input)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    rows = [
        ("one process, 1 fastrnn thread, no Dask", in_process_seconds(layer, x, 1, args.repeats)),
        ("one process, 2 fastrnn threads, no Dask", in_process_seconds(layer, x, 2, args.repeats)),
    ]
    del x
    one_worker = dask_seconds(layer, shape, args.chunk, 1, args.repeats)
    two_workers = dask_seconds(layer, shape, args.chunk, 2, args.repeats)
    rows += [("Dask, 1 worker x 1 thread", one_worker), ("Dask, 2 workers x 1 thread", two_workers)]

    print(f"LSTM float32 inference, (T, B, I) = ({args.steps}, {args.batch}, {args.input}), hidden {args.hidden}, "
          f"{args.batch // args.chunk} tasks of {args.chunk} sequences; median of {args.repeats} runs")
    print(f"{cpu_model()}, {os.cpu_count()} cores; fastrnn {fastrnn.__version__}, numpy {np.__version__}, "
          f"numba {numba.__version__}, dask {dask.__version__}")
    print()
    print("| run | seconds | sequences/s |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {args.batch / seconds:,.0f} |")
    print()
    print(f"Speedup from 1 to 2 Dask workers: {one_worker / two_workers:.2f}x")


if __name__ == "__main__":
    main()
