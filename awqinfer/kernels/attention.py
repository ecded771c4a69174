"""Causal grouped-query attention over a KV cache, one (token, head) pair per thread."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, fastmath=True)
def attention(q, k_cache, v_cache, start, out):
    """softmax(q k^T / sqrt(D)) v for new tokens at positions start..start+T-1.

    q (T, H, D) f32; k_cache, v_cache (KV, S, D) f32 holding positions 0..start+T-1;
    out (T, H, D) f32. Query head h reads KV head h // (H / KV); token t sees
    positions 0..start+t (causal).
    """
    n_tokens, n_heads, dim = q.shape
    group = n_heads // k_cache.shape[0]
    scale = np.float32(1.0 / np.sqrt(dim))
    for th in prange(n_tokens * n_heads):
        t = th // n_heads
        h = th % n_heads
        kv = h // group
        n_pos = start + t + 1
        scores = np.empty(n_pos, np.float32)
        best = np.float32(-np.inf)
        for s in range(n_pos):
            acc = np.float32(0.0)
            for i in range(dim):
                acc += q[t, h, i] * k_cache[kv, s, i]
            scores[s] = acc * scale
            best = max(best, scores[s])
        total = np.float32(0.0)
        for s in range(n_pos):
            scores[s] = np.exp(scores[s] - best)
            total += scores[s]
        for i in range(dim):
            out[t, h, i] = 0.0
        for s in range(n_pos):
            p = scores[s] / total
            for i in range(dim):
                out[t, h, i] += p * v_cache[kv, s, i]
