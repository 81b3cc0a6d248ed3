"""Scalar activations that LLVM can vectorise inside numba loops.

``math.tanh`` compiles to one libm call per element, which blocks SIMD (about 20 ns per
float64 element here, which dominated float64 forward passes). Both precisions use
branch-free plain arithmetic instead, which LLVM vectorises:
- float32: a clamped odd rational approximation, within a few float32 ulps of tanh.
- float64: an odd rational approximation near zero (Cephes' coefficients) and
  1 - 2 / (exp(2|x|) + 1) beyond, with exp computed by Cody-Waite range reduction and
  a degree-13 Taylor polynomial; within a couple of float64 ulps of tanh, so float64
  gradient checks stay exact to ~1e-15.

They are compiled as functions of their own, called from the kernels' loops, and take the
caller's fastmath flags and error model. LLVM inlines them before it vectorises those
loops, so the vector code is the same as with numba inlining them into each caller's IR,
which re-types the body at every call site: that made an LSTM's first forward and
backward from an empty cache take 12.0 s instead of 10.0 s (medians of alternated runs),
and numba's inliner warned about its own IR.
"""

import math

import numpy as np
from numba import types
from numba.extending import overload, register_jitable
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
_ONE = np.float32(1.0)
_P1, _P3, _P5, _P7, _P9, _P11, _P13 = _NUMERATOR
_Q0, _Q2, _Q4, _Q6 = _DENOMINATOR

# float64: below this |x|, tanh(x) = x + x z P(z) / Q(z), z = x^2 (Cephes' rational form,
# where 1 - 2 / (e^2x + 1) would lose digits to cancellation).
_TANH64_SMALL = 0.625
_TANH64_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH64_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)
# tanh(21.5) is 1.0 in float64 (1 - tanh(21.5) < 5e-19); clamping there keeps e^2x
# below 2^63, so 2^k comes from a 64-bit shift.
_TANH64_CLAMP = 21.5
_LOG2E = 1.4426950408889634
# ln 2 split so that k * _LN2_HIGH is exact for the k used here (Cody and Waite).
_LN2_HIGH = 6.93145751953125e-1
_LN2_LOW = 1.42860682030941723212e-6
_C = tuple(1.0 / math.factorial(n) for n in range(14))  # e^r's Taylor coefficients
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13 = _C


@register_jitable
def _exp_reduced(y):
    """e^y for 0 <= y <= 43, NaN in, NaN out; plain arithmetic, so it vectorises."""
    finite = y if y == y else 0.0
    k = int(finite * _LOG2E + 0.5)
    r = (y - k * _LN2_HIGH) - k * _LN2_LOW  # |r| <= ln2 / 2
    p = _C13
    p = p * r + _C12
    p = p * r + _C11
    p = p * r + _C10
    p = p * r + _C9
    p = p * r + _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _C1
    p = p * r + _C0
    # 2^k, exact: k <= 62 after the clamp, so the shift stays within int64.
    return p * float(1 << k)


@register_jitable
def _tanh64(x):
    z = x * x
    numerator = (_TANH64_P[0] * z + _TANH64_P[1]) * z + _TANH64_P[2]
    denominator = ((z + _TANH64_Q[0]) * z + _TANH64_Q[1]) * z + _TANH64_Q[2]
    near_zero = x + x * z * numerator / denominator
    magnitude = -x if x < 0.0 else x
    magnitude = _TANH64_CLAMP if magnitude > _TANH64_CLAMP else magnitude  # NaN stays NaN
    far = 1.0 - 2.0 / (_exp_reduced(2.0 * magnitude) + 1.0)
    far = -far if x < 0.0 else far
    return near_zero if magnitude < _TANH64_SMALL else far


def tanh(x):
    """Stub resolved per scalar type at compile time (see ``_tanh_impl``)."""
    return math.tanh(x)


@overload(tanh)
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
            # Saturate exactly: the fit ends 2 ulps short of 1 at the clamp.
            value = clamped * p / q
            value = _ONE if x >= _TANH_CLAMP else value
            return -_ONE if x <= -_TANH_CLAMP else value

        return rational_tanh

    if x == types.float64:
        return _tanh64

    def exact_tanh(x):
        return math.tanh(x)

    return exact_tanh


def relu(x):
    """Stub resolved at compile time; ``x < 0`` is false for NaN, so NaN propagates."""
    return 0.0 if x < 0 else x


@overload(relu)
def _relu_impl(x):
    zero = as_dtype(x).type(0)  # a constant of x's own type, so -inf maps to 0, not NaN

    def impl(x):
        return zero if x < 0 else x

    return impl



def sigmoid(x):
    """Stub resolved per scalar type at compile time (see ``_sigmoid_impl``)."""
    return 0.5 + 0.5 * math.tanh(0.5 * x)


@overload(sigmoid)
def _sigmoid_impl(x):
    # 1 / (1 + e^-x) as 0.5 + 0.5 tanh(x / 2): the vectorised tanh's accuracy, exactly 0
    # and 1 where tanh saturates, and constants of x's own type, so float32 stays float32.
    half = as_dtype(x).type(0.5)

    def impl(x):
        return half + half * tanh(x * half)

    return impl
