"""Elementwise kernels: the SwiGLU gate and the residual add."""

from __future__ import annotations

import numpy as np
from numba import njit

from .exp import exp_f32


@njit(cache=True, fastmath=True, nogil=True)
def silu_mul(gate_up, out):
    """gate_up (T, 2I) f32 = [gate | up]; out (T, I) f32 = silu(gate) * up."""
    n_tokens, width = out.shape
    for t in range(n_tokens):
        for i in range(width):
            g = gate_up[t, i]
            out[t, i] = g / (np.float32(1.0) + exp_f32(-g)) * gate_up[t, width + i]


@njit(cache=True, fastmath=True, nogil=True)
def add_(x, y):
    """x += y in place. x, y (T, H) f32."""
    n_tokens, width = x.shape
    for t in range(n_tokens):
        for i in range(width):
            x[t, i] += y[t, i]
