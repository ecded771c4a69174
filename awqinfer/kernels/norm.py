"""RMSNorm, as Llama and Qwen2 define it: x / sqrt(mean(x^2) + eps) * weight, in fp32."""

from __future__ import annotations

import numpy as np
from numba import njit

from .fastmath import FASTMATH


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def rmsnorm(x, weight, eps, out):
    """x (T, H) f32; weight (H,) f32; eps float; out (T, H) f32 (may alias x)."""
    n_tokens, hidden = x.shape
    for t in range(n_tokens):
        ss = np.float32(0.0)
        for i in range(hidden):
            ss += x[t, i] * x[t, i]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(hidden) + np.float32(eps))
        for i in range(hidden):
            out[t, i] = x[t, i] * inv * weight[i]
