"""Causal grouped-query attention over a KV cache, and the cache write that feeds it.

The cache holds float32 or float16 elements (kv.py): they are written with ``kv_write``
and read back as f32 with ``kv_read``; every sum runs in f32.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .exp import exp_f32
from .fastmath import FASTMATH
from .kv import kv_read, kv_write


@njit(cache=True, fastmath=True, nogil=True)
def store_kv(qkv, k_cache, v_cache, start, n_heads):
    """Copy the new tokens' k and v heads out of a fused qkv into the cache at start..start+T-1.

    qkv (T, (n_heads + 2 KV) * D) f32; k_cache, v_cache (KV, S, D) f32 or f16 bits; start, n_heads int.
    """
    n_tokens = qkv.shape[0]
    n_kv, _, dim = k_cache.shape
    k0 = n_heads * dim
    v0 = (n_heads + n_kv) * dim
    for t in range(n_tokens):
        for h in range(n_kv):
            for i in range(dim):
                k_cache[h, start + t, i] = kv_write(k_cache, qkv[t, k0 + h * dim + i])
                v_cache[h, start + t, i] = kv_write(v_cache, qkv[t, v0 + h * dim + i])


@njit(inline="always")
def add_weighted(o, p, vals):
    """o += sum_s p[s] vals[s]: o (D,) f32, p (n,) f32, vals (n, D) cache rows; four rows a pass.

    Both attentions' value sums. Row by row, each position loaded and stored all of o again, and the
    chain through o's memory set the pace; four rows a pass are 1.8x faster (docs/PERFORMANCE.md, item 23).
    """
    n = vals.shape[0]
    full = n - n % 4
    for s in range(0, full, 4):
        p0, p1, p2, p3 = p[s], p[s + 1], p[s + 2], p[s + 3]
        v0, v1, v2, v3 = vals[s], vals[s + 1], vals[s + 2], vals[s + 3]
        for i in range(o.shape[0]):
            o[i] += (p0 * kv_read(v0[i]) + p1 * kv_read(v1[i])) + (p2 * kv_read(v2[i]) + p3 * kv_read(v3[i]))
    for s in range(full, n):
        p0, v0 = p[s], vals[s]
        for i in range(o.shape[0]):
            o[i] += p0 * kv_read(v0[i])


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def attention(qkv, k_cache, v_cache, start, n_heads, out):
    """softmax(q k^T / sqrt(D)) v for new tokens at positions start..start+T-1.

    qkv (T, (n_heads + 2 KV) * D) f32, q heads first; k_cache, v_cache (KV, S, D) f32 or f16 bits
    holding positions 0..start+T-1; out (T, n_heads * D) f32. Query head h reads
    KV head h // (n_heads / KV); token t sees positions 0..start+t (causal).
    """
    n_tokens = qkv.shape[0]
    n_kv, _, dim = k_cache.shape
    group = n_heads // n_kv
    scale = np.float32(1.0 / np.sqrt(dim))
    for th in prange(n_tokens * n_heads):
        t = th // n_heads
        h = th % n_heads
        kv = h // group
        q = qkv[t, h * dim : (h + 1) * dim]
        o = out[t, h * dim : (h + 1) * dim]
        n_pos = start + t + 1
        scores = np.empty(n_pos, np.float32)
        best = np.float32(-np.inf)
        for s in range(n_pos):
            acc = np.float32(0.0)
            for i in range(dim):
                acc += q[i] * kv_read(k_cache[kv, s, i])
            scores[s] = acc * scale
            best = max(best, scores[s])
        total = np.float32(0.0)
        for s in range(n_pos):
            scores[s] = exp_f32(scores[s] - best)
            total += scores[s]
        o[:] = 0.0
        add_weighted(o, scores, v_cache[kv, :n_pos])
        inv = np.float32(1.0) / total
        for i in range(dim):
            o[i] *= inv
