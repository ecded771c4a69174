"""Dense float32 matmuls in the PyTorch ``nn.Linear`` layout (weight [N, K], y = x @ W.T)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, fastmath=True)
def dense_gemv(x, weight, out):
    """y = W x for one token. x (K,) f32; weight (N, K) f32; out (N,) f32."""
    n_out, k = weight.shape
    for n in prange(n_out):
        row = weight[n]
        acc = np.float32(0.0)
        for i in range(k):
            acc += x[i] * row[i]
        out[n] = acc


@njit(cache=True, parallel=True, fastmath=True)
def dense_gemm(x, weight, out):
    """Y = X W^T for a prompt, each weight row read once for all tokens.

    x (T, K) f32; weight (N, K) f32; out (T, N) f32.
    """
    n_tokens, k = x.shape
    n_out = weight.shape[0]
    for n in prange(n_out):
        row = weight[n]
        for t in range(n_tokens):
            xt = x[t]
            acc = np.float32(0.0)
            for i in range(k):
                acc += xt[i] * row[i]
            out[t, n] = acc
