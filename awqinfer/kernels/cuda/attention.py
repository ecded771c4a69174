"""Causal grouped-query attention over a KV cache kept on the GPU, as kernels/attention.py.

One block per (token, query head). The block walks the cached positions in chunks of
blockDim.x, one position per thread, with an online softmax (the running max and
sum are rescaled as each chunk arrives, as FlashAttention does), so shared memory
stays a constant size whatever the context length.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ...errors import DeviceError
from .launch import BLOCK, cdiv, max_segment, sum_segment, threads_for

MAX_HEAD_DIM = 256  # shared memory holds one query head and one output head of this size
NEG_BIG = -3.0e38  # "minus infinity" that stays finite under fastmath


@cuda.jit(fastmath=True)
def _store_kv(qkv, k_cache, v_cache, start, n_heads):
    n_kv, _, dim = k_cache.shape
    idx = cuda.grid(1)  # one thread per (t, kv head, i)
    if idx < qkv.shape[0] * n_kv * dim:
        i = idx % dim
        h = (idx // dim) % n_kv
        t = idx // (dim * n_kv)
        k_cache[h, start + t, i] = qkv[t, (n_heads + h) * dim + i]
        v_cache[h, start + t, i] = qkv[t, (n_heads + n_kv + h) * dim + i]


def store_kv(qkv, k_cache, v_cache, start, n_heads):
    """Copy the new tokens' k and v heads out of a fused qkv into the cache at start..start+T-1.

    qkv (T, (n_heads + 2 KV) * D) f32; k_cache, v_cache (KV, S, D) f32; start, n_heads int.
    """
    n = qkv.shape[0] * k_cache.shape[0] * k_cache.shape[2]
    _store_kv[cdiv(n, BLOCK), BLOCK](qkv, k_cache, v_cache, start, n_heads)


@cuda.jit(fastmath=True)
def _attention(qkv, k_cache, v_cache, start, n_heads, out):
    t = cuda.blockIdx.x // n_heads
    h = cuda.blockIdx.x % n_heads
    tid = cuda.threadIdx.x
    chunk = cuda.blockDim.x
    n_kv, _, dim = k_cache.shape
    kv = h // (n_heads // n_kv)
    q = cuda.shared.array(MAX_HEAD_DIM, np.float32)  # the query head, pre-scaled by 1/sqrt(D)
    o = cuda.shared.array(MAX_HEAD_DIM, np.float32)  # the unnormalised output, rescaled per chunk
    p = cuda.shared.array(BLOCK, np.float32)  # this chunk's exp(score - max)
    top = cuda.shared.array(BLOCK, np.float32)  # scratch of the max reduction
    total = cuda.shared.array(BLOCK, np.float32)  # scratch of the sum reduction
    scale = np.float32(1.0) / math.sqrt(np.float32(dim))
    for i in range(tid, dim, chunk):
        q[i] = qkv[t, h * dim + i] * scale
        o[i] = 0.0
    n_pos = start + t + 1  # token t sees positions 0..start+t
    m = np.float32(NEG_BIG)  # running max, the same in every thread
    denom = np.float32(0.0)  # running sum of exp(score - m)
    for c0 in range(0, n_pos, chunk):
        cuda.syncthreads()  # q is written; the previous chunk's p and reductions are consumed
        s = c0 + tid
        score = np.float32(NEG_BIG)
        if s < n_pos:
            score = np.float32(0.0)
            for i in range(dim):
                score += q[i] * k_cache[kv, s, i]
        top[tid] = score
        max_segment(top, 0, tid, chunk)
        m_new = max(m, top[0])
        alpha = math.exp(m - m_new)  # rescales what earlier chunks accumulated
        e = np.float32(0.0)
        if s < n_pos:
            e = math.exp(score - m_new)
        p[tid] = e
        total[tid] = e
        sum_segment(total, 0, tid, chunk)
        denom = denom * alpha + total[0]
        n_here = min(chunk, n_pos - c0)
        for i in range(tid, dim, chunk):  # thread tid owns output dims tid, tid + chunk, ...
            acc = o[i] * alpha
            for j in range(n_here):
                acc += p[j] * v_cache[kv, c0 + j, i]
            o[i] = acc
        m = m_new
    for i in range(tid, dim, chunk):
        out[t, h * dim + i] = o[i] / denom


def attention(qkv, k_cache, v_cache, start, n_heads, out):
    """softmax(q k^T / sqrt(D)) v for new tokens at positions start..start+T-1.

    qkv (T, (n_heads + 2 KV) * D) f32, q heads first; k_cache, v_cache (KV, S, D) f32
    holding positions 0..start+T-1; out (T, n_heads * D) f32. Query head h reads
    KV head h // (n_heads / KV); token t sees positions 0..start+t (causal).
    """
    n_tokens = qkv.shape[0]
    dim = k_cache.shape[2]
    if dim > MAX_HEAD_DIM:
        raise DeviceError(f"head_dim {dim} is larger than the CUDA attention kernel's {MAX_HEAD_DIM}")
    threads = threads_for(max(start + n_tokens, -(-dim // 4)))
    _attention[n_tokens * n_heads, threads](qkv, k_cache, v_cache, start, n_heads, out)
