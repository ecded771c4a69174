"""Dense float matmuls in the PyTorch ``nn.Linear`` layout (weight [N, K], y = x @ W.T).

Weights are f32, or 16-bit floats kept as stored (IEEE half or bfloat16, as their uint16
bits: Numba has no CPU float16) and widened to f32 inside the kernel, exactly, as they are
read: a 16-bit lm_head costs half the memory and half the bytes per token of a widened one.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .fastmath import FASTMATH
from .simd import f32_from_bits, half_to_f32


def widen(value, bf16):
    """One stored weight as f32: an f32 as it is; uint16 bits as bfloat16 if ``bf16``, else as IEEE half."""


@overload(widen)
def _widen(value, bf16):
    if value == types.float32:
        return lambda value, bf16: value
    if value == types.uint16:
        def from_bits(value, bf16):
            if bf16:
                return f32_from_bits(np.uint32(value) << np.uint32(16))
            return half_to_f32(value)
        return from_bits
    return None


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def dense_gemv(x, weight, out, bf16=False):
    """y = W x for one token. x (K,) f32; weight (N, K) f32, or 16-bit bits (uint16: bf16 if ``bf16``, else
    f16); out (N,) f32."""
    n_out, k = weight.shape
    for n in prange(n_out):
        row = weight[n]
        acc = np.float32(0.0)
        for i in range(k):
            acc += x[i] * widen(row[i], bf16)
        out[n] = acc


GEMM_TILE = 64  # weight rows per parallel task of a prompt matmul (64 x K f32 stays in L2)
TOKEN_BLOCK = 64  # prompt tokens per pass over a tile, so the tokens' rows stay in L2 too


@njit(cache=True, fastmath=True, nogil=True)
def gemm_block(x, w, out):
    """out[t, n] = x[t] . w[n]: x (T, K) f32; w (M, K) f32; out (T, M) f32, any strides.

    4 tokens x 4 weight rows at a time: 16 running sums held in registers, so each
    loaded value feeds 4 multiply-adds (a plain dot product feeds 1).
    """
    n_tokens, k = x.shape
    m = w.shape[0]
    t4 = n_tokens - n_tokens % 4
    m4 = m - m % 4
    for t in range(0, t4, 4):
        x0, x1, x2, x3 = x[t], x[t + 1], x[t + 2], x[t + 3]
        for n in range(0, m4, 4):
            w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
            a00 = a01 = a02 = a03 = np.float32(0.0)
            a10 = a11 = a12 = a13 = np.float32(0.0)
            a20 = a21 = a22 = a23 = np.float32(0.0)
            a30 = a31 = a32 = a33 = np.float32(0.0)
            for i in range(k):
                p, q, r, s = x0[i], x1[i], x2[i], x3[i]
                b0, b1, b2, b3 = w0[i], w1[i], w2[i], w3[i]
                a00 += p * b0
                a01 += p * b1
                a02 += p * b2
                a03 += p * b3
                a10 += q * b0
                a11 += q * b1
                a12 += q * b2
                a13 += q * b3
                a20 += r * b0
                a21 += r * b1
                a22 += r * b2
                a23 += r * b3
                a30 += s * b0
                a31 += s * b1
                a32 += s * b2
                a33 += s * b3
            out[t, n], out[t, n + 1], out[t, n + 2], out[t, n + 3] = a00, a01, a02, a03
            out[t + 1, n], out[t + 1, n + 1], out[t + 1, n + 2], out[t + 1, n + 3] = a10, a11, a12, a13
            out[t + 2, n], out[t + 2, n + 1], out[t + 2, n + 2], out[t + 2, n + 3] = a20, a21, a22, a23
            out[t + 3, n], out[t + 3, n + 1], out[t + 3, n + 2], out[t + 3, n + 3] = a30, a31, a32, a33
    for t in range(n_tokens):  # the edges: tokens past t4 (all rows), rows past m4 (all tokens)
        lo = 0 if t >= t4 else m4
        xt = x[t]
        for n in range(lo, m):
            wn = w[n]
            acc = np.float32(0.0)
            for i in range(k):
                acc += xt[i] * wn[i]
            out[t, n] = acc


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def dense_gemm(x, weight, out):
    """Y = X W^T for a prompt, in tiles of GEMM_TILE weight rows x TOKEN_BLOCK tokens.

    x (T, K) f32; weight (N, K) f32; out (T, N) f32.
    """
    n_tokens = x.shape[0]
    n_out = weight.shape[0]
    for j in prange((n_out + GEMM_TILE - 1) // GEMM_TILE):
        n0 = j * GEMM_TILE
        n1 = min(n_out, n0 + GEMM_TILE)
        for t0 in range(0, n_tokens, TOKEN_BLOCK):
            t1 = min(n_tokens, t0 + TOKEN_BLOCK)
            gemm_block(x[t0:t1], weight[n0:n1], out[t0:t1, n0:n1])


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def half_gemm(x, bits, bf16, out):
    """Y = X W^T for a prompt, W 16-bit: each tile of GEMM_TILE rows is widened once, then reused by every token.

    x (T, K) f32; bits (N, K) uint16 (f16, or bf16 if ``bf16``); out (T, N) f32.
    """
    n_tokens, k = x.shape
    n_out = bits.shape[0]
    for j in prange((n_out + GEMM_TILE - 1) // GEMM_TILE):
        n0 = j * GEMM_TILE
        n1 = min(n_out, n0 + GEMM_TILE)
        w = np.empty((n1 - n0, k), np.float32)  # one tile per task
        for r in range(n1 - n0):
            for i in range(k):
                w[r, i] = widen(bits[n0 + r, i], bf16)
        for t0 in range(0, n_tokens, TOKEN_BLOCK):
            t1 = min(n_tokens, t0 + TOKEN_BLOCK)
            gemm_block(x[t0:t1], w, out[t0:t1, n0:n1])
