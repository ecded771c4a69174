"""Int8 weight-only matmuls on the GPU, as kernels/int8.py: y[n] = s[n] * sum_k x[k] q[n, k].

qweight int8 (N, K), scales f32 (N,): the scale is applied once per output, after the dot product.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .dense import scaled_gemm
from .launch import gemv_launch, store_row_sum
from .tiles import gemm_launch


@cuda.jit(fastmath=True)
def _int8_gemv(x, qweight, scales, out):
    n_out, k = qweight.shape
    n = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    acc = np.float32(0.0)
    if n < n_out:
        # 4 consecutive int8 per lane, so a warp's loads span 128 bytes of the row, not 32
        for i0 in range(4 * cuda.threadIdx.x, k, 4 * cuda.blockDim.x):
            for i in range(i0, min(i0 + 4, k)):
                acc += x[i] * np.float32(qweight[n, i])
        acc *= scales[n]
    store_row_sum(acc, out, n, n_out)


def int8_gemv(x, qweight, scales, out):
    """y = W x for one token. x (K,) f32; qweight (N, K) int8; scales (N,) f32; out (N,) f32."""
    grid, block = gemv_launch(qweight.shape[0], qweight.shape[1], 4)
    _int8_gemv[grid, block](x, qweight, scales, out)


def int8_gemm(x, qweight, scales, out):
    """Y = X W^T for a prompt. x (T, K) f32; qweight (N, K) int8; scales (N,) f32; out (T, N) f32."""
    grid, block = gemm_launch(x.shape[0], qweight.shape[0])
    scaled_gemm[grid, block](x, qweight, scales, out)
