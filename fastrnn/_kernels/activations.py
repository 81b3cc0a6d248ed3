"""Scalar activations that LLVM can vectorise inside numba loops.

``math.tanh`` compiles to one libm call per element, which blocks SIMD. For float32 we
use a clamped odd rational approximation written in plain arithmetic, which vectorises
and stays within a few float32 ulps of tanh. float64 keeps libm's tanh so that float64
results stay exact to ~1e-15, which float64 gradient checks rely on.
"""

import math

import numpy as np
from numba import types
from numba.extending import overload
from numba.np.numpy_support import as_dtype

# Beyond |x| = 7.9 float32 tanh is 1.0 to the last bit; clamping keeps the polynomials
# in the range where they were fitted.
_TANH_CLAMP = np.float32(7.90531110763549805)
_NUMERATOR = tuple(
    np.float32(c)
    for c in (
        4.89352455891786e-03,
        6.37261928875436e-04,
        1.48572235717979e-05,
        5.12229709037114e-08,
        -8.60467152213735e-11,
        2.00018790482477e-13,
        -2.76076847742355e-16,
    )
)
_DENOMINATOR = tuple(
    np.float32(c)
    for c in (
        4.89352518554385e-03,
        2.26843463243900e-03,
        1.18534705686654e-04,
        1.19825839466702e-06,
    )
)
_P1, _P3, _P5, _P7, _P9, _P11, _P13 = _NUMERATOR
_Q0, _Q2, _Q4, _Q6 = _DENOMINATOR


def tanh(x):
    """Stub resolved per scalar type at compile time (see ``_tanh_impl``)."""
    return math.tanh(x)


@overload(tanh, inline="always")
def _tanh_impl(x):
    if x == types.float32:

        def rational_tanh(x):
            # Written as conditional expressions (not min/max) so LLVM emits vector
            # selects; the comparison order lets NaN fall through unchanged.
            clamped = _TANH_CLAMP if x > _TANH_CLAMP else x
            clamped = -_TANH_CLAMP if clamped < -_TANH_CLAMP else clamped
            x2 = clamped * clamped
            p = _P13
            p = p * x2 + _P11
            p = p * x2 + _P9
            p = p * x2 + _P7
            p = p * x2 + _P5
            p = p * x2 + _P3
            p = p * x2 + _P1
            q = _Q6
            q = q * x2 + _Q4
            q = q * x2 + _Q2
            q = q * x2 + _Q0
            return clamped * p / q

        return rational_tanh

    def exact_tanh(x):
        return math.tanh(x)

    return exact_tanh


def relu(x):
    """Stub resolved at compile time; ``x < 0`` is false for NaN, so NaN propagates."""
    return 0.0 if x < 0 else x


@overload(relu, inline="always")
def _relu_impl(x):
    zero = as_dtype(x).type(0)  # a constant of x's own type, so -inf maps to 0, not NaN

    def impl(x):
        return zero if x < 0 else x

    return impl
