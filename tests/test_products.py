"""The per-step products: how a step is cut into BLAS calls must never change the result."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import _stack
from fastrnn._config import jit
from fastrnn._kernels import elman
from fastrnn._kernels.layout import transposed

from .conftest import Config, assert_results_close, make_layers, make_problem, run_layer


# The helpers below are compiled into the kernels that call them; these kernels call
# them for the tests.
@jit
def _chunked_product(src, src_offset, src_ld, matrix, dst, dst_offset, dst_ld, rows, inner, cols, beta, single):
    elman._chunked_product(src, src_offset, src_ld, matrix, dst, dst_offset, dst_ld, rows, inner, cols, beta, single)


@jit
def _accumulate_gradient(a, a_offset, lda, b, b_offset, ldb, c, c_offset, ldc, m, n, k, single_threaded):
    elman._accumulate_gradient(a, a_offset, lda, b, b_offset, ldb, c, c_offset, ldc, m, n, k, single_threaded)


@pytest.mark.parametrize(
    ("rows", "inner", "cols", "single_threaded"),
    [
        (20, 256, 256, True),  # cut into small-kernel chunks of 12 + 8 rows
        (33, 300, 256, False),  # chunks that do not divide the rows
        (64, 256, 256, True),  # enough rows for one packed call
        (16, 512, 512, False),  # too wide for any small chunk: pool-sized chunks
        (5, 64, 64, False),  # small enough for one call
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_chunked_product_matches_numpy(rows, inner, cols, single_threaded, dtype):
    rng = np.random.default_rng(rows + inner + cols)
    src_ld, dst_ld = inner + 3, cols + 5  # row strides wider than the blocks, as in the kernels
    src = rng.standard_normal(2 + rows * src_ld).astype(dtype)
    matrix = rng.standard_normal(inner * cols).astype(dtype)
    dst = rng.standard_normal(1 + rows * dst_ld).astype(dtype)
    src_block = src[2:].reshape(rows, src_ld)[:, :inner]
    dst_block = dst[1:].reshape(rows, dst_ld)[:, :cols]
    expected = src_block.astype(np.float64) @ matrix.reshape(inner, cols) + 0.5 * dst_block
    untouched = dst.copy()

    _chunked_product(src, 2, src_ld, matrix, dst, 1, dst_ld, rows, inner, cols, 0.5, single_threaded)

    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dst_block, expected, rtol=tolerance, atol=tolerance * inner)
    # Padding between the blocks' rows is never written.
    padding = np.ones(dst.size, dtype=bool)
    padding[1:].reshape(rows, dst_ld)[:, :cols] = False
    np.testing.assert_array_equal(dst[padding], untouched[padding])


def test_row_chunk_cuts_mid_sized_steps():
    # The cases above only test chunking if chunking happens at those sizes.
    assert elman._row_chunk(20, 256, 256, True) == 12
    assert elman._row_chunk(33, 300, 256, False) == 12
    assert elman._row_chunk(64, 256, 256, True) == 64
    assert elman._row_chunk(5, 64, 64, False) == 5
    assert elman._row_chunk(16, 512, 512, False) == 1


@pytest.mark.parametrize("parallel", [False, True], ids=["one-thread", "threads"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_with_chunked_steps_matches_reference(bidirectional, parallel, monkeypatch):
    # B=40, H=256, I=260: the recurrent products, and on the threaded path each piece's
    # per-step input products (20 rows each), go through row chunks.
    original_threads = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2 if parallel else 1)
    monkeypatch.setattr(_stack, "PARALLEL_RECURRENCE_WORK", 0)
    try:
        config = Config(input_size=260, hidden_size=256, bidirectional=bidirectional)
        fast, slow = make_layers(config, np.float64)
        problem = make_problem(config, np.float64, steps=3, batch=40)
        assert (_stack._pieces_per_direction(fast.spec, 3, 40) > 0) == parallel
        assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float64)
    finally:
        fastrnn.set_num_threads(original_threads)


@pytest.mark.parametrize(("rows", "cols"), [(3, 5), (64, 64), (300, 257), (256, 512), (1024, 1024)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_transposed_matches_numpy(rows, cols, dtype):
    matrix = np.random.default_rng(rows * cols).standard_normal((rows, cols)).astype(dtype)
    before = matrix.copy()

    result = transposed(matrix.ravel(), rows, cols)

    assert result.dtype == dtype and result.shape == (rows * cols,) and result.flags.c_contiguous
    np.testing.assert_array_equal(result.reshape(cols, rows), matrix.T)
    np.testing.assert_array_equal(matrix, before)


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
    # B * H * H = 8M: each step is one BLAS call that may use BLAS's own threads.
    config = Config(input_size=16, hidden_size=1024, bidirectional=bidirectional)
    fast, slow = make_layers(config, np.float64)
    problem = make_problem(config, np.float64, steps=3, batch=8)
    assert 8 * 1024 * 1024 >= elman.LARGE_STEP_WORK
    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float64)
