"""exp of an f32 in plain arithmetic, so that the loops around it vectorise (softmax, SiLU).

For ``np.exp`` Numba calls the C library's ``expf``, one scalar call per element: ~2.2 ns each
here, and the attention's softmax takes one per (head, cached position), a tenth of a decode
step's attention at 1k tokens of context (docs/PERFORMANCE.md, item 23). The same function
written as arithmetic lets LLVM run 8 elements per instruction: 2.0 us against 20 us for 9216.

    exp(x) = 2^n e^r,  n = round(x / ln 2),  r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2]

with ln 2 in two parts (Cody and Waite: n times the first part is exact in f32, so r keeps its
bits), e^r by its Taylor series to r^7 (truncation below 6e-9 relative) and 2^n written as the
bits of an f32. x is first clamped to [LOWEST, HIGHEST] so that 2^n stays a normal f32: below,
the result is e^-87 = 1.6e-38 rather than smaller (a softmax term that small is nothing beside
its largest, e^0); above, e^88 = 1.7e38 rather than inf. Within that range it agrees with
float64 exp to ~1e-7 relative (tests/test_exp.py), as expf does.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .simd import f32_from_bits

LOWEST = np.float32(-87.0)  # e^x stays a normal f32 down to ~-87.3
HIGHEST = np.float32(88.0)  # and up to ~88.7
LOG2E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693145751953125)  # ln 2's first 16 bits: n * LN2_HI is exact for |n| < 256
LN2_LO = np.float32(1.428606765330187e-06)  # ln 2 - LN2_HI
EXPONENT_BIAS = 127  # an f32 with exponent bits n + 127 and a zero mantissa is 2^n
MANTISSA_BITS = 23


@njit(inline="always")
def exp_f32(x):
    """e^x for an f32 x, as arithmetic that vectorises; clamped to [e^-87, e^88]."""
    x = min(max(x, LOWEST), HIGHEST)
    n = np.floor(x * LOG2E + np.float32(0.5))
    r = (x - n * LN2_HI) - n * LN2_LO
    e_r = np.float32(1.0) + r * (np.float32(1.0) + r * (np.float32(1 / 2) + r * (np.float32(1 / 6) + r * (
        np.float32(1 / 24) + r * (np.float32(1 / 120) + r * (np.float32(1 / 720) + r * np.float32(1 / 5040)))))))
    return e_r * f32_from_bits(np.uint32((np.int32(n) + np.int32(EXPONENT_BIAS)) << np.int32(MANTISSA_BITS)))
