"""AWQ 4-bit matmuls on the kernel layout, and the compiled repack into it.

A checkpoint stores AutoAWQ's packing (engine/checkpoint/awq_layout.py: [K, N/8]
words, 8 output columns per word in an interleaved nibble order). The kernels use
another layout, chosen for a GEMV that reads each weight once, front to back
(docs/PERFORMANCE.md, "4-bit GEMV" item 4: repacking was 1.4-2.1x faster):

    qweight  int32 [N, K/8]   row n holds the K inputs of output n, word j holds
                              inputs 8j..8j+7 with input 8j+i in nibble i
    scales   f32   [N, G]     G = K / g groups
    zeros    u8    [N, G]     each group's zero point z, 0..15, so
                              y[n] = sum_g s*(x.q)_g - (s*z)*(sum x)_g

s*z is formed in the kernels, where it is exact in f32 for the checkpoint's f16 scales (an 11-bit
mantissa times a 4-bit integer). Zeros as bytes, not as a stored f32 s*z, hold a group's scale
and zero in 5 bytes instead of 8: 0.15 GB less for a 7B model at group 128.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .dense import GEMM_TILE, TOKEN_BLOCK, gemm_block
from .fastmath import FASTMATH

GEMV_CHUNKS = 4  # row chunks of one GEMV: two per core, so a stalled thread holds less back


@njit(cache=True, nogil=True)
def repack_words(columns, pack_order, out):
    """AWQ checkpoint words, transposed, -> kernel-layout words, at load time.

    columns (N/8, K) uint32: row c holds input k's nibbles for outputs 8c..8c+7 (AWQ's order);
    pack_order (8,) int64 = AWQ_PACK_ORDER; out (N, K/8) uint32: input 8j+i in nibble i of word j.
    """
    n_packs, k = columns.shape
    for c in range(n_packs):  # serial: ~3 GB/s, and a prange version ran 40x slower
        col = columns[c]
        for p in range(8):
            row = out[8 * c + pack_order[p]]
            shift = np.uint32(4 * p)
            for j in range(k // 8):
                word = np.uint32(0)
                for i in range(8):
                    word |= ((col[8 * j + i] >> shift) & np.uint32(15)) << np.uint32(4 * i)
                row[j] = word


# --- kernels on the kernel layout --------------------------------------------


@njit(cache=True, fastmath=True, nogil=True)
def dequantize_rows(qweight, scales, zeros, out):
    """Kernel layout -> float32 weights: qweight (M, K/8) int32; scales (M, G) f32; zeros (M, G) u8; out (M, K) f32."""
    n_out, n_words = qweight.shape
    words_per_group = n_words // scales.shape[1]
    for n in range(n_out):
        row = qweight[n]
        w_row = out[n]
        for g in range(scales.shape[1]):
            s = scales[n, g]
            sz = s * np.float32(zeros[n, g])
            words = row[g * words_per_group : (g + 1) * words_per_group]
            dst = w_row[8 * g * words_per_group : 8 * (g + 1) * words_per_group]
            for j in range(words_per_group):
                w = words[j]
                for i in range(8):
                    dst[8 * j + i] = _nibble(w, 4 * i) * s - sz


@njit(cache=True, fastmath=True, nogil=True)
def awq_prepare_input(x, xp, xsum):
    """Lay one token's input out for ``awq_rows``: xp[i, j] = x[8j + i], xsum[g] = sum of group g.

    x (K,) f32; xp (8, K/8) f32; xsum (G,) f32. With xp, input 8j+i and nibble i of
    word j sit at the same index j of parallel arrays, so the unpacking vectorises
    across words (contiguous loads only) instead of within one word.
    """
    n_words = xp.shape[1]
    for j in range(n_words):
        for i in range(8):
            xp[i, j] = x[8 * j + i]
    group_size = x.shape[0] // xsum.shape[0]
    for g in range(xsum.shape[0]):
        xg = x[g * group_size : (g + 1) * group_size]
        acc = np.float32(0.0)
        for i in range(group_size):
            acc += xg[i]
        xsum[g] = acc


@njit(inline="always")
def _nibble(w, shift):
    """Bits shift..shift+3 of the int32 w as f32, kept in int32 (Numba widens to int64 otherwise)."""
    return np.float32(np.int32(np.int32(w >> np.int32(shift)) & np.int32(15)))


@njit(cache=True, fastmath=True, nogil=True)
def awq_rows(xp, xsum, qweight, scales, zeros, lo, hi, word_dots, out):
    """out[n] = x . W[n] for rows lo..hi-1, from awq_prepare_input's xp, xsum.

    qweight (N, K/8) int32; scales (N, G) f32; zeros (N, G) u8; word_dots (K/8,) f32 scratch; out (N,) f32.
    Per row: word_dots[j] = sum_i xp[i, j] * q[8j+i] (int32 shifts and masks, one
    vectorised pass over the row, docs/PERFORMANCE.md 4-bit GEMV items 1-3), then per group
    out += s * sum(word_dots) - s*z * sum(x).
    """
    n_words = qweight.shape[1]
    n_groups = scales.shape[1]
    wpg = n_words // n_groups
    x0, x1, x2, x3 = xp[0], xp[1], xp[2], xp[3]
    x4, x5, x6, x7 = xp[4], xp[5], xp[6], xp[7]
    for r in range(hi - lo):
        n = lo + r
        row = qweight[n]
        for j in range(n_words):
            w = row[j]
            word_dots[j] = (
                x0[j] * _nibble(w, 0)
                + x1[j] * _nibble(w, 4)
                + x2[j] * _nibble(w, 8)
                + x3[j] * _nibble(w, 12)
                + x4[j] * _nibble(w, 16)
                + x5[j] * _nibble(w, 20)
                + x6[j] * _nibble(w, 24)
                + x7[j] * _nibble(w, 28)
            )
        s_row = scales[n]
        z_row = zeros[n]
        acc = np.float32(0.0)
        for g in range(n_groups):
            part = word_dots[g * wpg : (g + 1) * wpg]
            dot = np.float32(0.0)
            for j in range(wpg):
                dot += part[j]
            acc += s_row[g] * dot - s_row[g] * np.float32(z_row[g]) * xsum[g]
        out[n] = acc


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def awq_matvec(xp, xsum, qweight, scales, zeros, word_dots, out):
    """awq_rows over all N rows, split into word_dots.shape[0] contiguous chunks run in parallel.

    word_dots (n_chunks, K/8) f32 scratch, one row per chunk; the rest as awq_rows.
    """
    n_chunks = word_dots.shape[0]
    n_out = qweight.shape[0]
    for c in prange(n_chunks):
        awq_rows(xp, xsum, qweight, scales, zeros, c * n_out // n_chunks, (c + 1) * n_out // n_chunks,
                 word_dots[c], out)


@njit(cache=True, fastmath=True, nogil=True)
def awq_gemv(x, qweight, scales, zeros, out):
    """y = x @ W for one token, reading each packed weight once.

    x (K,) f32; qweight (N, K/8) int32; scales (N, G) f32; zeros (N, G) u8; out (N,) f32.
    Scale and zero are applied once per group: y += s * sum(x*q) - s*z * sum(x).
    """
    n_words = qweight.shape[1]
    xp = np.empty((8, n_words), np.float32)
    xsum = np.empty(scales.shape[1], np.float32)
    awq_prepare_input(x, xp, xsum)
    word_dots = np.empty((GEMV_CHUNKS, n_words), np.float32)
    awq_matvec(xp, xsum, qweight, scales, zeros, word_dots, out)


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def awq_gemm(x, qweight, scales, zeros, out):
    """Y = X @ W for a prompt: each tile of GEMM_TILE rows is dequantised once, then reused by every token.

    x (T, K) f32; qweight (N, K/8) int32; scales (N, G) f32; zeros (N, G) u8; out (T, N) f32.
    """
    n_tokens, k = x.shape
    n_out = qweight.shape[0]
    for j in prange((n_out + GEMM_TILE - 1) // GEMM_TILE):
        n0 = j * GEMM_TILE
        n1 = min(n_out, n0 + GEMM_TILE)
        w = np.empty((n1 - n0, k), np.float32)  # one tile per task: (N / GEMM_TILE) allocations per call
        dequantize_rows(qweight[n0:n1], scales[n0:n1], zeros[n0:n1], w)
        for t0 in range(0, n_tokens, TOKEN_BLOCK):
            t1 = min(n_tokens, t0 + TOKEN_BLOCK)
            gemm_block(x[t0:t1], w, out[t0:t1, n0:n1])
