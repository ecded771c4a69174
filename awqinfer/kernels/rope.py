"""Rotary position embedding in Hugging Face's half-split ("rotate_half") layout.

Dimension i of a head is paired with dimension i + D/2 and the pair is rotated
by the angle pos * inv_freq[i]. The angles' cos/sin come from engine/rope.py.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def apply_rope(qkv, cos, sin, n_rotated, head_dim):
    """Rotate the first ``n_rotated`` heads of each row in place (the q and k heads of a fused qkv).

    qkv (T, n_heads_total * D) f32; cos, sin (T, D/2) f32; n_rotated int; head_dim int D.
    """
    n_tokens = qkv.shape[0]
    half = head_dim // 2
    for t in range(n_tokens):
        for h in range(n_rotated):
            base = h * head_dim
            for i in range(half):
                a = qkv[t, base + i]
                b = qkv[t, base + i + half]
                qkv[t, base + i] = a * cos[t, i] - b * sin[t, i]
                qkv[t, base + i + half] = b * cos[t, i] + a * sin[t, i]
