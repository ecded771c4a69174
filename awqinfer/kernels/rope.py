"""Rotary position embedding in Hugging Face's half-split ("rotate_half") layout.

Dimension i of a head is paired with dimension i + D/2 and the pair is rotated
by the angle pos * inv_freq[i]. The angles' cos/sin come from engine/rope.py.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, fastmath=True)
def apply_rope(x, cos, sin):
    """Rotate x in place. x (T, n_heads, D) f32; cos, sin (T, D/2) f32."""
    n_tokens, n_heads, dim = x.shape
    half = dim // 2
    for t in range(n_tokens):
        for h in range(n_heads):
            for i in range(half):
                a = x[t, h, i]
                b = x[t, h, i + half]
                x[t, h, i] = a * cos[t, i] - b * sin[t, i]
                x[t, h, i + half] = b * cos[t, i] + a * sin[t, i]
