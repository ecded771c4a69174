"""Int8 weight-only matmuls: symmetric, one scale per output channel.

    W[n, k] ~= q[n, k] * s[n],   q int8 in -127..127,   s = max_k |W[n, k]| / 127

The scale is constant along a row, so it is applied once per output after an
fp32 dot product of x with the raw int8 row: y[n] = s[n] * sum_k x[k] q[n, k].
Weights stay int8 in memory (a quarter of fp32); activations stay fp32. Quantizing the
weights happens once at load, outside the kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fastmath import FASTMATH

INT8_MAX = 127  # symmetric: -128 is never used, so q and -q are both representable


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def int8_gemv(x, qweight, scales, out):
    """y = W x for one token. x (K,) f32; qweight (N, K) int8; scales (N,) f32; out (N,) f32."""
    n_out, k = qweight.shape
    for n in prange(n_out):
        row = qweight[n]
        acc = np.float32(0.0)
        for i in range(k):
            acc += x[i] * np.float32(row[i])
        out[n] = acc * scales[n]


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def int8_gemm(x, qweight, scales, out):
    """Y = X W^T for a prompt: each int8 row is widened once and reused by every token.

    x (T, K) f32; qweight (N, K) int8; scales (N,) f32; out (T, N) f32.
    """
    n_tokens, k = x.shape
    n_out = qweight.shape[0]
    for n in prange(n_out):
        row = qweight[n].astype(np.float32)  # (K,)
        s = scales[n]
        for t in range(n_tokens):
            xt = x[t]
            acc = np.float32(0.0)
            for i in range(k):
                acc += xt[i] * row[i]
            out[t, n] = acc * s
