"""The vectorisable tanh used inside the kernels, against NumPy's tanh."""

from __future__ import annotations

import numpy as np
import pytest

from fastrnn._config import jit
from fastrnn._kernels.activations import tanh


@jit
def _apply_tanh(values, out):
    for i in range(values.size):
        out[i] = tanh(values[i])


def _points(dtype):
    rng = np.random.default_rng(0)
    scales = (1e-8, 1e-3, 0.3, 0.6, 1.0, 3.0, 10.0, 30.0)
    random = [rng.standard_normal(20_000) * scale for scale in scales]
    edges = [np.linspace(-25.0, 25.0, 100_001), np.array([0.625, -0.625, 22.0, -22.0, 1e30, -1e30])]
    return np.concatenate(random + edges).astype(dtype)


@pytest.mark.parametrize(
    "dtype,max_ulps", [(np.float32, 6), (np.float64, 2)], ids=["float32", "float64"]
)
def test_tanh_is_within_a_few_ulps(dtype, max_ulps):
    values = _points(dtype)
    out = np.empty_like(values)
    _apply_tanh(values, out)
    expected = np.tanh(values.astype(np.float64))
    error_ulps = np.abs(out.astype(np.float64) - expected) / np.spacing(np.abs(expected).astype(dtype))
    assert error_ulps.max() <= max_ulps


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_tanh_of_non_finite_values(dtype):
    values = np.array([np.nan, np.inf, -np.inf, 0.0], dtype=dtype)
    out = np.empty_like(values)
    _apply_tanh(values, out)
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:], [1.0, -1.0, 0.0])
