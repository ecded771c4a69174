"""Rotary position embedding on the GPU, as kernels/rope.py (Hugging Face's half-split layout)."""

from __future__ import annotations

from numba import cuda

from .launch import BLOCK, cdiv


@cuda.jit(fastmath=True)
def _apply_rope(qkv, cos, sin, n_rotated, head_dim):
    half = head_dim // 2
    idx = cuda.grid(1)  # one thread per rotated pair (t, h, i)
    if idx < qkv.shape[0] * n_rotated * half:
        i = idx % half
        h = (idx // half) % n_rotated
        t = idx // (half * n_rotated)
        lo = h * head_dim + i
        a = qkv[t, lo]
        b = qkv[t, lo + half]
        qkv[t, lo] = a * cos[t, i] - b * sin[t, i]
        qkv[t, lo + half] = b * cos[t, i] + a * sin[t, i]


def apply_rope(qkv, cos, sin, n_rotated, head_dim):
    """Rotate the first ``n_rotated`` heads of each row in place.

    qkv (T, n_heads_total * D) f32; cos, sin (T, D/2) f32; n_rotated int; head_dim int D.
    """
    n = qkv.shape[0] * n_rotated * (head_dim // 2)
    _apply_rope[cdiv(n, BLOCK), BLOCK](qkv, cos, sin, n_rotated, head_dim)
