"""The products inside the kernels: how they are cut into tiles or BLAS calls must never change the result."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import _stack
from fastrnn._config import jit
from fastrnn._kernels import elman
from fastrnn._kernels.native import ensure_compiled
from fastrnn._kernels.packed import PANEL_BYTES, pack_bytes, packed_product

from .conftest import Config, assert_results_close, make_layers, make_problem, run_layer

# The helpers below are compiled into the kernels that call them; these kernels call
# them for the tests, after the C functions they reach are compiled.
ensure_compiled(np.float32)
ensure_compiled(np.float64)


@jit
def _packed_product(src, src_offset, src_ld, weight, transposed_source, dst, dst_offset, dst_ld, rows, inner, cols):
    packed = pack_bytes(weight, weight, inner, cols, transposed_source).view(weight.dtype)
    scratch = np.full(rows * (PANEL_BYTES // dst.itemsize), np.nan, dtype=dst.dtype)
    packed_product(src, src_offset, src_ld, packed, dst, dst_offset, dst_ld, rows, inner, cols, scratch)


@jit
def _packed(weight, inner, cols, transposed_source):
    return pack_bytes(weight, weight, inner, cols, transposed_source).view(weight.dtype)


@jit
def _accumulate_gradient(a, a_offset, lda, b, b_offset, ldb, c, c_offset, ldc, m, n, k, single_threaded):
    elman._accumulate_gradient(a, a_offset, lda, b, b_offset, ldb, c, c_offset, ldc, m, n, k, single_threaded)


SHAPES = [
    (1, 1, 1),
    (1, 32, 64),  # one row: the tile kernel with several accumulator chains
    # One row over an odd count of full panels: the first three in one tile, then pairs
    # (panels of 32, 16 or 8 values: 3, 5, 7 or 21 full ones among these, with and without an edge).
    (1, 32, 96),
    (1, 40, 112),
    (1, 600, 170),
    (2, 40, 100),  # under 3 rows: panels in pairs, then a single one and an edge
    (3, 40, 100),  # three rows: one tile of 3 per panel, and an edge
    (2, 600, 64),  # two rows over a pair of panels, the inner dimension in two chunks
    (3, 17, 33),  # one full panel and a one-column edge
    (5, 33, 64),  # tiles of 5 (of 4 and 1 where TILE_ROWS is 4)
    (6, 70, 96),  # tiles of 6 (4 and 2)
    (13, 600, 65),  # rows in tiles of 8 and 5 (4s and 1); inner dimension in two chunks
    (16, 128, 128),
    (7, 1200, 40),  # tiles of 7 (4 and 3), three chunks of the inner dimension, an edge panel
    (64, 1024, 96),
]


@pytest.mark.parametrize(("rows", "inner", "cols"), SHAPES)
@pytest.mark.parametrize("transposed_source", [True, False], ids=["weight-transposed", "weight-as-is"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_packed_product_matches_numpy(rows, inner, cols, transposed_source, dtype):
    rng = np.random.default_rng(rows + inner + cols)
    src_ld, dst_ld = inner + 3, cols + 5  # row strides wider than the blocks, as in the kernels
    src = rng.standard_normal(2 + rows * src_ld).astype(dtype)
    weight = rng.standard_normal(inner * cols).astype(dtype)
    matrix = weight.reshape(cols, inner).T if transposed_source else weight.reshape(inner, cols)
    dst = rng.standard_normal(1 + rows * dst_ld).astype(dtype)
    src_block = src[2:].reshape(rows, src_ld)[:, :inner]
    dst_block = dst[1:].reshape(rows, dst_ld)[:, :cols]
    expected = src_block.astype(np.float64) @ matrix + dst_block
    untouched = dst.copy()
    weight_before, src_before = weight.copy(), src.copy()

    _packed_product(src, 2, src_ld, weight, transposed_source, dst, 1, dst_ld, rows, inner, cols)

    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dst_block, expected, rtol=tolerance, atol=tolerance * inner)
    # Padding between the blocks' rows is never written, and the operands are unchanged.
    padding = np.ones(dst.size, dtype=bool)
    padding[1:].reshape(rows, dst_ld)[:, :cols] = False
    np.testing.assert_array_equal(dst[padding], untouched[padding])
    np.testing.assert_array_equal(weight, weight_before)
    np.testing.assert_array_equal(src, src_before)


# Register-width blocks are transposed whole, the rest value by value: shapes with whole
# blocks only, with inner or panel columns past the last block, and with both.
@pytest.mark.parametrize(
    ("inner", "cols"), [(1, 1), (5, 33), (16, 64), (64, 256), (300, 64), (257, 1000), (1024, 40), (40, 24)]
)
@pytest.mark.parametrize("transposed_source", [True, False], ids=["weight-transposed", "weight-as-is"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_packed_weight_layout(inner, cols, transposed_source, dtype):
    # Panel p holds columns p*w:(p+1)*w of B as `inner` rows of w values, zero past `cols`.
    weight = np.random.default_rng(inner * cols).standard_normal(inner * cols).astype(dtype)
    matrix = weight.reshape(cols, inner).T if transposed_source else weight.reshape(inner, cols)
    width = PANEL_BYTES // weight.itemsize
    panels = -(-cols // width)
    padded = np.zeros((inner, panels * width), dtype=dtype)
    padded[:, :cols] = matrix

    packed = _packed(weight, inner, cols, transposed_source)

    expected = padded.reshape(inner, panels, width).transpose(1, 0, 2).ravel()
    np.testing.assert_array_equal(packed, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_packed_product_propagates_non_finite_values(dtype):
    # NaN and inf in a row reach exactly the outputs they feed, as in a plain product.
    rows, inner, cols = 9, 40, 70
    src = np.ones(rows * inner, dtype=dtype)
    src[2 * inner + 5] = np.nan
    src[6 * inner] = np.inf
    weight = np.ones(inner * cols, dtype=dtype)
    dst = np.zeros(rows * cols, dtype=dtype)

    _packed_product(src, 0, inner, weight, True, dst, 0, cols, rows, inner, cols)

    result = dst.reshape(rows, cols)
    assert np.isnan(result[2]).all() and np.isposinf(result[6]).all()
    finite = np.delete(result, [2, 6], axis=0)
    np.testing.assert_array_equal(finite, np.full_like(finite, inner))


@pytest.mark.parametrize("parallel", [False, True], ids=["one-thread", "threads"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_with_edge_panels_and_row_remainders_matches_reference(bidirectional, parallel, monkeypatch):
    # B=43, H=100, I=70: neither the hidden nor the input size fills whole panels, and on
    # the threaded path each piece's rows (21 and 22) end in tiles of 4, 2 and 1 rows.
    original_threads = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2 if parallel else 1)
    monkeypatch.setattr(_stack, "PARALLEL_RECURRENCE_WORK", 0)
    try:
        config = Config(input_size=70, hidden_size=100, bidirectional=bidirectional)
        fast, slow = make_layers(config, np.float64)
        problem = make_problem(config, np.float64, steps=3, batch=43)
        assert (_stack.pieces_per_direction(fast.spec, 3, 43) > 0) == parallel
        assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float64)
    finally:
        fastrnn.set_num_threads(original_threads)


@pytest.mark.parametrize(
    ("m", "n", "k", "single_threaded", "chunk"),
    [
        (64, 64, 4096, True, 240),  # summed in small-kernel chunks of 240 rows
        (32, 48, 1000, True, 640),  # a last chunk shorter than the others
        (64, 64, 4096, False, 4096),  # BLAS may use its pool: one packed call
        (256, 256, 500, True, 500),  # too wide for chunks of at least 32 rows
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_accumulate_gradient_matches_numpy(m, n, k, single_threaded, chunk, dtype):
    assert elman._sum_chunk(m, n, k, single_threaded) == chunk
    rng = np.random.default_rng(m + n + k)
    lda, ldb = m + 7, n + 2
    a = rng.standard_normal(3 + k * lda).astype(dtype)
    b = rng.standard_normal(k * ldb).astype(dtype)
    c = rng.standard_normal(m * n).astype(dtype)
    a_block = a[3:].reshape(k, lda)[:, :m].astype(np.float64)
    b_block = b.reshape(k, ldb)[:, :n].astype(np.float64)
    expected = c.reshape(m, n) + a_block.T @ b_block

    _accumulate_gradient(a, 3, lda, b, 0, ldb, c, 0, n, m, n, k, single_threaded)

    tolerance = 1e-3 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(c.reshape(m, n), expected, rtol=tolerance, atol=tolerance * np.sqrt(k))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_with_large_steps_matches_reference(bidirectional):
    # H=1024: the inner dimension of each step runs in several chunks.
    config = Config(input_size=16, hidden_size=1024, bidirectional=bidirectional)
    fast, slow = make_layers(config, np.float64)
    problem = make_problem(config, np.float64, steps=3, batch=8)
    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float64)


# The tile shape and vector width follow the CPU numba compiles for: 8 rows of two 64-byte
# vectors with AVX-512, 4 rows of two 32-byte vectors otherwise (LLVM splits those into
# 16-byte halves without AVX). numba compiles for the CPU that NUMBA_CPU_NAME names, so a
# fresh interpreter told to target one runs that code here, against the reference engine,
# for every cell kind and dtype.
ISA_SCRIPT = """
import sys
import numpy as np
import fastrnn
from fastrnn import reference
from fastrnn._kernels import packed

assert (packed.VECTOR_BYTES, packed.TILE_ROWS) == (int(sys.argv[1]), int(sys.argv[2])), (
    packed.VECTOR_BYTES, packed.TILE_ROWS)
worst = 0.0
for cell, options in (("RNN", {}), ("LSTM", {}), ("LSTM", {"proj_size": 7}), ("GRU", {})):
    for dtype in (np.float32, np.float64):
        for steps, batch, inputs, hidden, layers, bidirectional in ((5, 7, 9, 20, 2, True), (4, 21, 40, 70, 1, False)):
            arguments = dict(bidirectional=bidirectional, dtype=dtype, seed=1, **options)
            fast = getattr(fastrnn, cell)(inputs, hidden, layers, **arguments)
            slow = getattr(reference, cell)(inputs, hidden, layers, **arguments)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((steps, batch, inputs)).astype(dtype)
            width = (2 if bidirectional else 1) * options.get("proj_size", hidden)
            grad = rng.standard_normal((steps, batch, width)).astype(dtype)
            results = []
            for layer in (fast, slow):
                output, finals = layer(x)
                grad_x, grad_initials = layer.backward(grad)
                states = finals if isinstance(finals, tuple) else (finals,)
                grad_states = grad_initials if isinstance(grad_initials, tuple) else (grad_initials,)
                results.append([output, grad_x, *states, *grad_states] + [layer.grads[n] for n in sorted(layer.grads)])
            for mine, expected in zip(*results, strict=True):
                error = np.max(np.abs(mine - expected) / (1.0 + np.abs(expected)))
                worst = max(worst, float(error) / (1e-4 if dtype == np.float32 else 1e-10))
print(worst)
"""
BASELINE = "+64bit,+cmov,+sse,+sse2"
AVX2 = BASELINE + ",+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+avx,+avx2,+fma,+f16c,+bmi,+bmi2"
ISA_TARGETS = {
    "x86-64": (BASELINE, 32, 4),
    "haswell": (AVX2, 32, 4),
    "skylake-avx512": (AVX2 + ",+avx512f,+avx512dq,+avx512cd,+avx512bw,+avx512vl", 64, 8),
}


def _host_has_avx512() -> bool:
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("avx512f", False))


@pytest.mark.parametrize("cpu", sorted(ISA_TARGETS))
def test_kernels_compiled_for_each_isa_match_reference(cpu, tmp_path):
    features, vector_bytes, tile_rows = ISA_TARGETS[cpu]
    if "+avx512f" in features and not _host_has_avx512():
        pytest.skip("this CPU cannot run AVX-512 code; the AVX-512 build is checked on machines that have it")
    environment = {
        **os.environ,
        "NUMBA_CPU_NAME": cpu,
        "NUMBA_CPU_FEATURES": features,
        "NUMBA_CACHE_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", ISA_SCRIPT, str(vector_bytes), str(tile_rows)], env=environment,
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The worst error, in units of the parameter-gradient rtol of the parity tests (1e-4 float32, 1e-10 float64).
    assert float(result.stdout.split()[-1]) < 1.0, result.stdout
