"""The int8 lm_head's screen: int8 weights against the activations' hi digits, B rows per call.

The decode step's Int8Head (kernels/decode.py) scores every vocabulary row with this kernel, then
recomputes the top candidates exactly. Its input is kernels/qdot.py's conversion of the activations
(``quantize_rows``): the hi digits alone are an int8 quantization with scale 128 xs, and only those
are read. The weights are int8 with one scale per row, their columns in qdot's kernel order
(``to_kernel_order``, at load). s8 x s8 byte products are taken as |w| x (x * sign w) (llama.cpp's
trick, ``vpmaddubsw``), or with VNNI's ``vpdpbusd`` where the CPU has it (the same integers); each
32-byte chunk of weights serves up to 4 activation rows held in registers. A plain-loop twin runs
on CPUs without AVX2; both are tested against numpy (tests/test_qdot.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fastmath import FASTMATH
from .qdot import ACT_BLOCK, DIGIT, ROW_BLOCK
from .simd import AVX2, VNNI, abs_i8, add_i32, dot_u8s8, hsum, load_bytes, madd_pairs, madd_u8s8, scale_add, \
    sign_i8, zeros_f32x8, zeros_i32x8


@njit(inline="always")
def _halves_dot_avx2(u0, s0, u1, s1):
    """I32x8: u0 . s0 + u1 . s1 (u8 x s8, 32 bytes each), each lane summing four bytes of each; nothing
    saturates for |s| <= 127 and u <= 128."""
    return add_i32(madd_pairs(madd_u8s8(u0, s0)), madd_pairs(madd_u8s8(u1, s1)))


@njit(inline="always")
def _halves_dot_vnni(u0, s0, u1, s1):
    """_halves_dot_avx2 with VNNI's ``vpdpbusd``: the same sums in two instructions instead of five."""
    return dot_u8s8(dot_u8s8(zeros_i32x8(), u0, s0), u1, s1)


_halves_dot = _halves_dot_vnni if VNNI else _halves_dot_avx2  # bit for bit the same I32x8


@njit(inline="always")
def _int8_block(acc, u0, w0, u1, w1, x_hi, c, xs):
    """acc + block c's products scaled by xs: weights w0, w1 (and |w|: u0, u1) in two 32-byte halves, s8 x s8."""
    d = _halves_dot(u0, sign_i8(load_bytes(x_hi, 64 * c), w0), u1, sign_i8(load_bytes(x_hi, 64 * c + 32), w1))
    return scale_add(acc, d, xs, xs)


@njit(cache=True, fastmath=True, nogil=True)
def _int8_rows_simd(xq, xscale, q8, wscale, lo, hi, out):
    """out[:, lo:hi] for the rows lo..hi-1 of int8 weights: s8 x s8 as |w| x (x * sign w), up to 4 rows a pass."""
    n_rows_b = xq.shape[0]
    n_blocks = q8.shape[1] // ACT_BLOCK
    for n0 in range(lo, hi, ROW_BLOCK):
        for b0 in range(0, n_rows_b, 4):
            m = min(4, n_rows_b - b0)
            x0, x1, x2, x3 = xq[b0, 0], xq[b0 + min(1, m - 1), 0], xq[b0 + min(2, m - 1), 0], xq[b0 + min(3, m - 1), 0]
            for n in range(n0, min(hi, n0 + ROW_BLOCK)):
                row = q8[n]
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
                scale = wscale[n] * np.float32(DIGIT)
                out[b0, n] = hsum(a0) * scale
                if m > 1:
                    out[b0 + 1, n] = hsum(a1) * scale
                if m > 2:
                    out[b0 + 2, n] = hsum(a2) * scale
                if m > 3:
                    out[b0 + 3, n] = hsum(a3) * scale


@njit(cache=True, fastmath=True, nogil=True)
def _int8_rows_plain(xq, xscale, q8, wscale, lo, hi, out):
    """_int8_rows_simd in plain loops (CPUs without AVX2): same arguments, same result."""
    n_rows_b = xq.shape[0]
    n_blocks = q8.shape[1] // ACT_BLOCK
    for n in range(lo, hi):
        row = q8[n]
        for b in range(n_rows_b):
            x_hi = xq[b, 0]
            total = np.float32(0.0)
            for c in range(n_blocks):
                dot = np.int32(0)
                for i in range(c * ACT_BLOCK, (c + 1) * ACT_BLOCK):
                    dot += np.int32(row[i]) * np.int32(x_hi[i])
                total += np.float32(dot) * xscale[b, c]
            out[b, n] = total * wscale[n] * np.float32(DIGIT)


int8_rows_q = _int8_rows_simd if AVX2 else _int8_rows_plain


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def int8_matvec_q(xq, xscale, q8, wscale, out, n_tasks):
    """out ~= X @ W^T for int8 weights and the hi digits of X (an int8 screen), in ``n_tasks`` parallel ranges.

    xq (B, 2, K) int8 and xscale (B, K/64) f32 from ``quantize_rows`` (only xq[:, 0] is read: x
    rounded to int8 with scale 128 xscale); q8 (N, K) int8 with columns in kernel order
    (``to_kernel_order``); wscale (N,) f32 per output row; out (B, N) f32.
    """
    n_out = q8.shape[0]
    for t in prange(n_tasks):
        int8_rows_q(xq, xscale, q8, wscale, t * n_out // n_tasks, (t + 1) * n_out // n_tasks, out)
