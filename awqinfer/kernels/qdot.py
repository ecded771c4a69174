"""Integer-dot GEMVs for decoding: int8 activations against 4-bit AWQ or int8 weights, B rows per call.

A one-token 4-bit GEMV spends its time unpacking nibbles into floats (docs/PERFORMANCE.md,
4-bit GEMV item 6). Here the activations are quantized instead, once per call, to int8 with
one scale per block of ACT_BLOCK inputs (llama.cpp's Q8 trade), and each 32-byte chunk of
weights is multiplied as bytes (``vpmaddubsw``, kernels/simd.py) into i32 sums; one float
multiply-add per block applies both scales:

    y[b, n] = sum_c  s[n, g(c)] * xs[b, c] * (q[n] . xq[b])_c  -  sz[n, g(c)] * xs[b, c] * sum(xq[b])_c

with c the input blocks, g(c) the weight group holding block c, sz = s * zero (kernels/awq.py's
layout, unchanged). Weight groups are whole blocks (group size a multiple of 64) or, for groups
of 32, the two halves of one block, each with its own scale and zero. The activation rounding costs ~0.5% relative error per output (measured and
bounded in tests/test_kernels_fast.py); the readable forward keeps f32 activations.

Input order. With the kernel layout's nibble order (kernels/awq.py), the low nibbles of 32
consecutive bytes of a row are the even inputs of a 64-input block and the high nibbles the odd
ones. Activations are quantized into that order ("kernel order": per block, the 32 even inputs,
then the 32 odd), so unpacking is one AND and one shift per 32 bytes; the int8 lm_head's
columns are permuted to the same order at load (``to_kernel_order``).

Batch-ready. Every kernel takes B activation rows (xq (B, K)) and writes out (B, N): each weight
chunk is loaded and unpacked once and used for all B rows (B = 1 for one sequence).

The SIMD kernels need AVX2 (kernels/simd.py); elsewhere the plain-loop twins of the same
signature run, chosen when this module is imported. Both are tested against numpy.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .simd import AVX2, abs_i8, add_i16, add_i32, hsum, load_bytes, madd_pairs, madd_u8s8, nibbles, scale_add, sign_i8, \
    zeros_f32x8

ACT_BLOCK = 64  # inputs per activation scale: one 32-byte chunk of 4-bit weights
INT8_MAX = 127


def to_kernel_order(w: np.ndarray) -> np.ndarray:
    """Columns of w (N, K) permuted to kernel order: per 64-column block, the even columns, then the odd."""
    n, k = w.shape
    blocks = w.reshape(n, k // ACT_BLOCK, ACT_BLOCK)
    return np.ascontiguousarray(np.concatenate([blocks[..., 0::2], blocks[..., 1::2]], axis=2).reshape(n, k))


@njit(cache=True, fastmath=True, nogil=True)
def quantize_rows(x, xq, xscale, xbsum):
    """Activations -> int8 in kernel order, one scale per ACT_BLOCK inputs.

    x (B, K) f32; xq (B, K) int8; xscale (B, K/64) f32 = absmax/127 of each block (0 for a zero
    block); xbsum (B, K/32) f32 = xscale * the sum of xq over each half block (inputs 0-31 and
    32-63 of it, in natural order): the dequantized sums the zero points multiply.
    """
    half = ACT_BLOCK // 2
    for b in range(x.shape[0]):
        xb, qb = x[b], xq[b]
        for c in range(xscale.shape[1]):
            block = xb[c * ACT_BLOCK : (c + 1) * ACT_BLOCK]
            top = np.float32(0.0)
            for i in range(ACT_BLOCK):
                top = max(top, abs(block[i]))
            scale = top / np.float32(INT8_MAX)
            inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
            first = second = 0  # the code sums of inputs 0-31 and 32-63
            for i in range(ACT_BLOCK):
                q = np.int32(np.rint(block[i] * inv))
                qb[c * ACT_BLOCK + (i % 2) * half + i // 2] = q
                if i < half:
                    first += q
                else:
                    second += q
            xscale[b, c] = scale
            xbsum[b, 2 * c] = scale * np.float32(first)
            xbsum[b, 2 * c + 1] = scale * np.float32(second)


# --- AWQ 4-bit weights ------------------------------------------------------------------------------


@njit(inline="always")
def _awq_block(acc, low, high, xb, c, xs, s_lo, s_hi):
    """acc + chunk c's products: low/high nibbles (the 32 even, 32 odd inputs) x xb's block c, scaled.

    The i16 sums of the two halves cannot overflow: 2 x 2 x 15 x 127 < 2^15.
    """
    pairs = add_i16(madd_u8s8(low, load_bytes(xb, 64 * c)), madd_u8s8(high, load_bytes(xb, 64 * c + 32)))
    return scale_add(acc, madd_pairs(pairs), s_lo * xs, s_hi * xs)


@njit(cache=True, fastmath=True, nogil=True)
def _awq_rows_simd(xq, xscale, xbsum, qweight, scales, szeros, lo, hi, out):
    """out[:, lo:hi] for the rows lo..hi-1: each 32-byte chunk unpacked once, used by up to 4 rows at a time."""
    n_rows_b = xq.shape[0]
    n_chunks = qweight.shape[1] // 8  # chunks of 8 words = 32 bytes = 64 inputs
    split = scales.shape[1] == 2 * n_chunks  # groups of 32: each chunk's halves have their own scale
    per_step = 1 if split else n_chunks // scales.shape[1]  # chunks sharing one (pair of) scale(s)
    for n in range(lo, hi):
        row = qweight[n]
        for b0 in range(0, n_rows_b, 4):  # four activation rows per pass: four accumulators in registers
            m = min(4, n_rows_b - b0)
            x0, x1, x2, x3 = xq[b0], xq[b0 + min(1, m - 1)], xq[b0 + min(2, m - 1)], xq[b0 + min(3, m - 1)]
            a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
            z0 = z1 = z2 = z3 = np.float32(0.0)
            for step in range(n_chunks // per_step):
                g = 2 * step if split else step
                h = g + 1 if split else g  # the group of each chunk's second half
                s_lo, s_hi, sz_lo, sz_hi = scales[n, g], scales[n, h], szeros[n, g], szeros[n, h]
                for c in range(step * per_step, (step + 1) * per_step):
                    low, high = nibbles(load_bytes(row, 32 * c))
                    a0 = _awq_block(a0, low, high, x0, c, xscale[b0, c], s_lo, s_hi)
                    z0 += sz_lo * xbsum[b0, 2 * c] + sz_hi * xbsum[b0, 2 * c + 1]
                    if m > 1:
                        a1 = _awq_block(a1, low, high, x1, c, xscale[b0 + 1, c], s_lo, s_hi)
                        z1 += sz_lo * xbsum[b0 + 1, 2 * c] + sz_hi * xbsum[b0 + 1, 2 * c + 1]
                    if m > 2:
                        a2 = _awq_block(a2, low, high, x2, c, xscale[b0 + 2, c], s_lo, s_hi)
                        z2 += sz_lo * xbsum[b0 + 2, 2 * c] + sz_hi * xbsum[b0 + 2, 2 * c + 1]
                    if m > 3:
                        a3 = _awq_block(a3, low, high, x3, c, xscale[b0 + 3, c], s_lo, s_hi)
                        z3 += sz_lo * xbsum[b0 + 3, 2 * c] + sz_hi * xbsum[b0 + 3, 2 * c + 1]
            out[b0, n] = hsum(a0) - z0
            if m > 1:
                out[b0 + 1, n] = hsum(a1) - z1
            if m > 2:
                out[b0 + 2, n] = hsum(a2) - z2
            if m > 3:
                out[b0 + 3, n] = hsum(a3) - z3


@njit(cache=True, fastmath=True, nogil=True)
def _awq_rows_plain(xq, xscale, xbsum, qweight, scales, szeros, lo, hi, out):
    """_awq_rows_simd in plain loops (CPUs without AVX2): same arguments, same result."""
    n_rows_b = xq.shape[0]
    n_chunks = qweight.shape[1] // 8
    halves_per_group = 2 * n_chunks // scales.shape[1]
    for n in range(lo, hi):
        row = qweight[n]
        for b in range(n_rows_b):
            total = np.float32(0.0)
            for c in range(n_chunks):
                xb = xq[b, 64 * c : 64 * c + 64]
                for half in range(2):  # inputs 32*half .. 32*half+31 of the block: words 4*half..4*half+3
                    dot = np.int32(0)
                    for w in range(4 * half, 4 * half + 4):  # word w: inputs 8w..8w+7, evens at 4w+p, odds at 32+4w+p
                        word = np.int32(row[8 * c + w])
                        for p in range(4):
                            dot += np.int32((word >> np.int32(8 * p)) & np.int32(15)) * np.int32(xb[4 * w + p])
                            dot += np.int32((word >> np.int32(8 * p + 4)) & np.int32(15)) * np.int32(xb[32 + 4 * w + p])
                    g = (2 * c + half) // halves_per_group
                    total += scales[n, g] * xscale[b, c] * np.float32(dot) - szeros[n, g] * xbsum[b, 2 * c + half]
            out[b, n] = total


awq_rows_q8 = _awq_rows_simd if AVX2 else _awq_rows_plain


@njit(cache=True, parallel=True, fastmath=True, nogil=True)
def awq_matvec_q8(xq, xscale, xbsum, qweight, scales, szeros, out, n_tasks):
    """out = Xq @ W^T for B quantized rows, the N outputs split into ``n_tasks`` parallel row ranges.

    xq (B, K) int8 in kernel order; xscale (B, K/64), xbsum (B, K/32) f32 (``quantize_rows``);
    qweight (N, K/8) int32; scales, szeros (N, G) f32, the group size K/G 32 or a multiple of 64;
    out (B, N) f32.
    """
    n_out = qweight.shape[0]
    for t in prange(n_tasks):
        awq_rows_q8(xq, xscale, xbsum, qweight, scales, szeros, t * n_out // n_tasks, (t + 1) * n_out // n_tasks, out)


# --- int8 weights (the lm_head) ---------------------------------------------------------------------


@njit(inline="always")
def _int8_block(acc, u0, w0, u1, w1, xb, c, xs):
    """acc + block c's products, scaled by xs: weights w0, w1 (and |w|: u0, u1) in two 32-byte halves, s8 x s8."""
    d0 = madd_pairs(madd_u8s8(u0, sign_i8(load_bytes(xb, 64 * c), w0)))
    d1 = madd_pairs(madd_u8s8(u1, sign_i8(load_bytes(xb, 64 * c + 32), w1)))
    return scale_add(acc, add_i32(d0, d1), xs, xs)


@njit(cache=True, fastmath=True, nogil=True)
def _int8_rows_simd(xq, xscale, q8, wscale, lo, hi, out):
    """out[:, lo:hi] for the rows lo..hi-1 of int8 weights: s8 x s8 as |w| x (x * sign w), 4 rows a pass."""
    n_rows_b = xq.shape[0]
    n_blocks = q8.shape[1] // ACT_BLOCK
    for n in range(lo, hi):
        row = q8[n]
        for b0 in range(0, n_rows_b, 4):
            m = min(4, n_rows_b - b0)
            x0, x1, x2, x3 = xq[b0], xq[b0 + min(1, m - 1)], xq[b0 + min(2, m - 1)], xq[b0 + min(3, m - 1)]
            a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
            for c in range(n_blocks):
                w0 = load_bytes(row, 64 * c)
                w1 = load_bytes(row, 64 * c + 32)
                u0, u1 = abs_i8(w0), abs_i8(w1)
                a0 = _int8_block(a0, u0, w0, u1, w1, x0, c, xscale[b0, c])
                if m > 1:
                    a1 = _int8_block(a1, u0, w0, u1, w1, x1, c, xscale[b0 + 1, c])
                if m > 2:
                    a2 = _int8_block(a2, u0, w0, u1, w1, x2, c, xscale[b0 + 2, c])
                if m > 3:
                    a3 = _int8_block(a3, u0, w0, u1, w1, x3, c, xscale[b0 + 3, c])
            out[b0, n] = hsum(a0) * wscale[n]
            if m > 1:
                out[b0 + 1, n] = hsum(a1) * wscale[n]
            if m > 2:
                out[b0 + 2, n] = hsum(a2) * wscale[n]
            if m > 3:
                out[b0 + 3, n] = hsum(a3) * wscale[n]


@njit(cache=True, fastmath=True, nogil=True)
def _int8_rows_plain(xq, xscale, q8, wscale, lo, hi, out):
    """_int8_rows_simd in plain loops (CPUs without AVX2): same arguments, same result."""
    n_rows_b = xq.shape[0]
    n_blocks = q8.shape[1] // ACT_BLOCK
    for n in range(lo, hi):
        row = q8[n]
        for b in range(n_rows_b):
            xb = xq[b]
            total = np.float32(0.0)
            for c in range(n_blocks):
                dot = np.int32(0)
                for i in range(c * ACT_BLOCK, (c + 1) * ACT_BLOCK):
                    dot += np.int32(row[i]) * np.int32(xb[i])
                total += np.float32(dot) * xscale[b, c]
            out[b, n] = total * wscale[n]


int8_rows_q8 = _int8_rows_simd if AVX2 else _int8_rows_plain


@njit(cache=True, parallel=True, fastmath=True, nogil=True)
def int8_matvec_q8(xq, xscale, q8, wscale, out, n_tasks):
    """out = Xq @ W^T for int8 weights, the N outputs split into ``n_tasks`` parallel row ranges.

    xq (B, K) int8 and xscale (B, K/64) f32 from ``quantize_rows``; q8 (N, K) int8 with columns in
    kernel order (``to_kernel_order``); wscale (N,) f32 per output row; out (B, N) f32.
    """
    n_out = q8.shape[0]
    for t in prange(n_tasks):
        int8_rows_q8(xq, xscale, q8, wscale, t * n_out // n_tasks, (t + 1) * n_out // n_tasks, out)
