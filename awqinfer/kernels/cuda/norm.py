"""RMSNorm on the GPU, as kernels/norm.py: x / sqrt(mean(x^2) + eps) * weight, in f32."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .launch import BLOCK, as_f32, sum_segment, threads_for


@cuda.jit(fastmath=True)
def _rmsnorm(x, weight, eps, out):
    t = cuda.blockIdx.x  # one block per token
    tid = cuda.threadIdx.x
    hidden = x.shape[1]
    ss = np.float32(0.0)
    for i in range(tid, hidden, cuda.blockDim.x):
        v = x[t, i]
        ss += v * v
    buf = cuda.shared.array(BLOCK, np.float32)
    buf[tid] = ss
    sum_segment(buf, 0, tid, cuda.blockDim.x)
    inv = np.float32(1.0) / math.sqrt(buf[0] / np.float32(hidden) + eps)
    for i in range(tid, hidden, cuda.blockDim.x):  # each thread rewrites only what it read: out may alias x
        out[t, i] = x[t, i] * inv * weight[i]


def rmsnorm(x, weight, eps, out):
    """x (T, H) f32; weight (H,) f32; eps float; out (T, H) f32 (may alias x)."""
    _rmsnorm[x.shape[0], threads_for(x.shape[1], items=4)](x, weight, as_f32(eps), out)
