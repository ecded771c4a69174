"""The SwiGLU gate: silu(gate) * up, on the fused gate_up projection's output."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def silu_mul(gate_up, out):
    """gate_up (T, 2I) f32 = [gate | up]; out (T, I) f32 = silu(gate) * up."""
    n_tokens, width = out.shape
    for t in range(n_tokens):
        for i in range(width):
            g = gate_up[t, i]
            out[t, i] = g / (np.float32(1.0) + np.exp(-g)) * gate_up[t, width + i]
