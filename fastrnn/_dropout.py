"""Inter-layer dropout masks, drawn the same way by every engine so results match."""

import numpy as np


def dropout_mask(generator: np.random.Generator, shape: tuple[int, ...], p: float, dtype: np.dtype) -> np.ndarray:
    """Inverted-dropout mask: 0 with probability ``p``, else ``1 / (1 - p)``.

    Draws are float64 whatever ``dtype`` is, so float32 and float64 layers built with one
    seed drop the same units.
    """
    draws = generator.random(shape)
    if p >= 1.0:
        return np.zeros(shape, dtype=dtype)
    return np.where(draws >= p, 1.0 / (1.0 - p), 0.0).astype(dtype)
