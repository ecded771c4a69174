"""Attention of one new token per sequence, for a batch of sequences each over its own KV cache.

The decode step's attention (kernels/decode.py): row b of the batch is sequence b's new
token at position ``positions[b]``; it attends to positions 0..positions[b] of its own
cache. Work is split flash-decoding style: each task is one (sequence, KV head, chunk of
ATTN_CHUNK positions), which reads those keys and values once for every query head that
shares them and leaves a partial softmax (running max, denominator, weighted values);
the chunks of each (sequence, head) are then merged. The split depends on a sequence's
own length only, never on the batch, so a sequence gets the very same numbers alone or
batched. The readable reference is kernels/attention.py's ``attention``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .attention import add_weighted
from .exp import exp_f32
from .fastmath import FASTMATH
from .kv import kv_read

ATTN_CHUNK = 256  # cache positions per attention task: short contexts stay one task per KV head


@njit(inline="always", cache=True)  # also called from Python (scratch sizes): cached
def n_chunks(n_pos):
    """Position chunks of a sequence attending to n_pos positions."""
    return (n_pos + ATTN_CHUNK - 1) // ATTN_CHUNK


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def attend_rows(qkv, k_caches, v_caches, layer, positions, scores, o_part, m_part, l_part, out):
    """out[b] = softmax(q_b K_b^T / sqrt(D)) V_b for each row b, over its cache's positions 0..positions[b].

    qkv (B, (n_heads + 2 KV) * D) f32, q heads first; k_caches, v_caches: typed lists of B arrays
    (L, KV, S_b, D), f32 or f16 bits (kv.py), each holding its row's positions 0..positions[b];
    layer int; positions (B,) int64; scratch: scores (B, n_heads, S) f32, o_part (B, n_heads, C, D),
    m_part, l_part (B, n_heads, C) f32, with S > max(positions) and C >= n_chunks(S);
    out (B, n_heads * D) f32.
    """
    n_rows = qkv.shape[0]
    n_heads = scores.shape[1]
    _, n_kv, _, dim = k_caches[0].shape
    group = n_heads // n_kv
    scale = np.float32(1.0 / np.sqrt(dim))
    first_task = np.zeros(n_rows + 1, np.int64)  # tasks of row b: first_task[b]..first_task[b+1]-1
    for b in range(n_rows):
        first_task[b + 1] = first_task[b] + n_kv * n_chunks(positions[b] + 1)
    for task in prange(first_task[n_rows]):
        b = 0
        while task >= first_task[b + 1]:
            b += 1
        n_pos = positions[b] + 1
        chunks = n_chunks(n_pos)
        kv = (task - first_task[b]) // chunks
        c = (task - first_task[b]) % chunks
        s0 = c * n_pos // chunks
        s1 = (c + 1) * n_pos // chunks
        keys = k_caches[b][layer, kv, s0:s1]
        vals = v_caches[b][layer, kv, s0:s1]
        for gi in range(group):
            h = kv * group + gi
            qh = qkv[b, h * dim : (h + 1) * dim]
            sc = scores[b, h, s0:s1]
            best = np.float32(-np.inf)
            for s in range(s1 - s0):
                krow = keys[s]
                acc = np.float32(0.0)
                for i in range(dim):
                    acc += qh[i] * kv_read(krow[i])
                sc[s] = acc * scale
                best = max(best, sc[s])
            total = np.float32(0.0)
            for s in range(s1 - s0):
                e = exp_f32(sc[s] - best)
                sc[s] = e
                total += e
            o = o_part[b, h, c]
            o[:] = 0.0
            add_weighted(o, sc, vals)
            m_part[b, h, c] = best
            l_part[b, h, c] = total
    for bh in prange(n_rows * n_heads):
        b = bh // n_heads
        h = bh % n_heads
        chunks = n_chunks(positions[b] + 1)
        best = np.float32(-np.inf)
        for c in range(chunks):
            best = max(best, m_part[b, h, c])
        total = np.float32(0.0)
        oh = out[b, h * dim : (h + 1) * dim]
        oh[:] = 0.0
        for c in range(chunks):
            w = exp_f32(m_part[b, h, c] - best)
            total += w * l_part[b, h, c]
            oc = o_part[b, h, c]
            for i in range(dim):
                oh[i] += w * oc[i]
        inv = np.float32(1.0) / total
        for i in range(dim):
            oh[i] *= inv
