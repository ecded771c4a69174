"""Integer-dot GEMVs for decoding: fixed-point activations against 4-bit AWQ or int8 weights, B rows per call.

A one-token 4-bit GEMV spends its time unpacking nibbles into floats (docs/PERFORMANCE.md,
4-bit GEMV item 6). Here the activations are converted instead, once per call, and each
32-byte chunk of weights is multiplied as bytes (``vpmaddubsw``, kernels/simd.py) into i32
sums; one float multiply-add per 64 inputs applies both scales.

Activations: 15-bit fixed point in two int8 digits. Each block of ACT_BLOCK = 64 inputs gets
one scale xs = absmax / FIXED_MAX, and each input the integer v = rint(x / xs), |v| <= 127 * 128,
stored as digits v = 128 * hi + lo with hi in -127..127 and lo in -64..64. A product with a
weight byte is then two byte products: q.v = 128 (q.hi) + (q.lo), summed by ``vpmaddwd`` with
128s and with 1s. The rounding is 1/32512 of the block's absmax, ~3e-5 relative per output:
greedy tokens stay the f32 reference's (with int8 activations alone, as llama.cpp's Q8, error
~0.5%, the default model's greedy text parted from the reference's within 10-17 tokens on 3
of 6 test prompts). The hi digits alone are an int8 quantization with scale 128 xs: the int8
lm_head's screen reads just those.

    y[b, n] = sum_c  s[n, g] * xs[b, c] * ((q[n] . v[b])_c  -  z[n, g] * sum(v[b])_c)

with c the input blocks (each half block: groups of 32 take one scale and zero point per half),
g the weight group of the block, z the group's zero point (kernels/awq.py's layout, unchanged).
The zero point's term is integer, added to the block's integer dot product before the one
conversion to float: exact, one vector load and multiply per block (the half-block sums times
the negated zero points). Formed in float beside the dot product, as a separate sum per row, it
took half the GEMV's time at K = 576 (docs/PERFORMANCE.md, item 17).

Input order. With the kernel layout's nibble order (kernels/awq.py), the low nibbles of 32
consecutive bytes of a row are the even inputs of a 64-input block and the high nibbles the odd
ones. Activations are converted into that order ("kernel order": per block, the 32 even inputs,
then the 32 odd), so unpacking is one AND and one shift per 32 bytes; the int8 lm_head's
columns are permuted to the same order at load (``to_kernel_order``).

Batch-ready. Every kernel takes B activation rows (xq (B, 2, K)) and writes out (B, N): each
weight chunk is loaded and unpacked once and used for up to 4 rows held in registers (B = 1
for one sequence). The SIMD kernels need AVX2 (kernels/simd.py); elsewhere plain-loop twins of
the same signature run, chosen when this module is imported. Both are tested against numpy.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fastmath import FASTMATH
from .simd import AVX2, abs_i8, add_i16, add_i32, halves_i32, hsum, load_bytes, load_i32x8, madd_pairs, \
    madd_pairs_x128, madd_u8s8, mul_i32, nibbles, scale_add, sign_i8, zeros_f32x8

ACT_BLOCK = 64  # inputs per activation scale: one 32-byte chunk of 4-bit weights
DIGIT = 128  # v = DIGIT * hi + lo
FIXED_MAX = 127 * DIGIT  # the largest |v|: hi stays within int8
ROW_BLOCK = 16  # weight rows per block of the SIMD kernels (revisited from cache for activation rows 5-8, ...)


def to_kernel_order(w: np.ndarray) -> np.ndarray:
    """Columns of w (N, K) permuted to kernel order: per 64-column block, the even columns, then the odd."""
    n, k = w.shape
    blocks = w.reshape(n, k // ACT_BLOCK, ACT_BLOCK)
    return np.ascontiguousarray(np.concatenate([blocks[..., 0::2], blocks[..., 1::2]], axis=2).reshape(n, k))


@njit(cache=True, fastmath=True, nogil=True)
def quantize_rows(x, xq, xscale, xsum):
    """Activations -> fixed point in kernel order, as two int8 digits, one scale per ACT_BLOCK inputs.

    x (B, K) f32; xq (B, 2, K) int8: xq[b, 0] the hi digits, xq[b, 1] the lo digits; xscale
    (B, K/64) f32 = absmax / FIXED_MAX of each block (0 for a zero block); xsum (B, K/8) int32 =
    for each block 8 lanes (sum0, 0, 0, 0, sum1, 0, 0, 0): the sums of v over its halves (inputs
    0-31 and 32-63 of it, in natural order), laid out as a block's dot product lanes are, to be
    multiplied by the zero points; |sum| <= 32 * FIXED_MAX.
    """
    half = ACT_BLOCK // 2
    for b in range(x.shape[0]):
        xb, hi_digits, lo_digits = x[b], xq[b, 0], xq[b, 1]
        for c in range(xscale.shape[1]):
            block = xb[c * ACT_BLOCK : (c + 1) * ACT_BLOCK]
            top = np.float32(0.0)
            for i in range(ACT_BLOCK):
                top = max(top, abs(block[i]))
            scale = top / np.float32(FIXED_MAX)
            inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
            first = second = 0  # the sums of v over inputs 0-31 and 32-63
            for i in range(ACT_BLOCK):
                v = np.int32(np.rint(block[i] * inv))
                hi = np.int32(np.rint(np.float32(v) / np.float32(DIGIT)))
                at = c * ACT_BLOCK + (i % 2) * half + i // 2
                hi_digits[at] = hi
                lo_digits[at] = v - DIGIT * hi
                if i < half:
                    first += v
                else:
                    second += v
            xscale[b, c] = scale
            xsum[b, 8 * c : 8 * c + 8] = 0
            xsum[b, 8 * c] = first
            xsum[b, 8 * c + 4] = second


# --- AWQ 4-bit weights ------------------------------------------------------------------------------


@njit(inline="always")
def _awq_block(acc, low, high, hi, lo, sums, c, f_lo, f_hi, minus_z):
    """acc + chunk c's products scaled by (f_lo, f_hi): nibbles low/high (the 32 even, 32 odd inputs) x block c,
    less the zero points of its two halves times their activation sums.

    hi, lo (K,) int8: one activation row's digits; sums (K/8,) int32 its half-block sums (``quantize_rows``);
    minus_z: I32x8 of the negated zero points, the first half's in lanes 0-3, the second's in 4-7. Each i16 lane
    sums 4 products of at most 15 x 127, each i32 lane at most 8 x 15 x FIXED_MAX plus a zero point's
    15 x 32 x FIXED_MAX: no overflow, and exact in the f32 conversion (below 2^24).
    """
    on_hi = add_i16(madd_u8s8(low, load_bytes(hi, 64 * c)), madd_u8s8(high, load_bytes(hi, 64 * c + 32)))
    on_lo = add_i16(madd_u8s8(low, load_bytes(lo, 64 * c)), madd_u8s8(high, load_bytes(lo, 64 * c + 32)))
    zero_term = mul_i32(load_i32x8(sums, 32 * c), minus_z)
    return scale_add(acc, add_i32(add_i32(madd_pairs_x128(on_hi), madd_pairs(on_lo)), zero_term), f_lo, f_hi)


@njit(inline="always")
def _awq_rows_one(hi_digits, lo_digits, xs, sums, qweight, scales, zeros, lo, hi, per_group, out):
    """_awq_rows_simd for one activation row and groups of 64 inputs or more, without its branches for
    rows 2-4 (~1.4x faster on small rows). out (N,) f32; the rest as _awq_rows_simd."""
    for n in range(lo, hi):
        row = qweight[n]
        acc = zeros_f32x8()
        for g in range(scales.shape[1]):
            s, z = scales[n, g], np.int32(-np.int64(zeros[n, g]))
            minus_z = halves_i32(z, z)
            for c in range(g * per_group, (g + 1) * per_group):
                low, high = nibbles(load_bytes(row, 32 * c))
                acc = _awq_block(acc, low, high, hi_digits, lo_digits, sums, c, s * xs[c], s * xs[c], minus_z)
        out[n] = hsum(acc)


@njit(cache=True, fastmath=True, nogil=True)
def _awq_rows_simd(xq, xscale, xsum, qweight, scales, zeros, lo, hi, out):
    """out[:, lo:hi] for the rows lo..hi-1: each 32-byte chunk unpacked once, used by up to 4 activation rows.

    Rows go in blocks of ROW_BLOCK (in L1/L2 when a block is revisited for the next 4 activation rows).
    """
    n_rows_b = xq.shape[0]
    n_chunks = qweight.shape[1] // 8  # chunks of 8 words = 32 bytes = 64 inputs
    split = scales.shape[1] == 2 * n_chunks  # groups of 32: each chunk's halves have their own scale
    per_step = 1 if split else n_chunks // scales.shape[1]  # chunks sharing one (pair of) scale(s)
    if n_rows_b == 1 and not split:  # one sequence, groups of 64 or more: the lean loop
        _awq_rows_one(xq[0, 0], xq[0, 1], xscale[0], xsum[0], qweight, scales, zeros, lo, hi, per_step, out[0])
        return
    for n0 in range(lo, hi, ROW_BLOCK):
        for b0 in range(0, n_rows_b, 4):  # four activation rows per pass: four accumulators in registers
            m = min(4, n_rows_b - b0)
            r1, r2, r3 = b0 + min(1, m - 1), b0 + min(2, m - 1), b0 + min(3, m - 1)  # rows past B repeat the last
            h0, h1, h2, h3 = xq[b0, 0], xq[r1, 0], xq[r2, 0], xq[r3, 0]
            l0, l1, l2, l3 = xq[b0, 1], xq[r1, 1], xq[r2, 1], xq[r3, 1]
            u0, u1, u2, u3 = xsum[b0], xsum[r1], xsum[r2], xsum[r3]
            for n in range(n0, min(hi, n0 + ROW_BLOCK)):
                row = qweight[n]
                a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
                for step in range(n_chunks // per_step):
                    g = 2 * step if split else step
                    h = g + 1 if split else g  # the group of each chunk's second half
                    s_lo, s_hi = scales[n, g], scales[n, h]
                    minus_z = halves_i32(np.int32(-np.int64(zeros[n, g])), np.int32(-np.int64(zeros[n, h])))
                    for c in range(step * per_step, (step + 1) * per_step):
                        low, high = nibbles(load_bytes(row, 32 * c))
                        a0 = _awq_block(a0, low, high, h0, l0, u0, c, s_lo * xscale[b0, c], s_hi * xscale[b0, c],
                                        minus_z)
                        if m > 1:
                            a1 = _awq_block(a1, low, high, h1, l1, u1, c, s_lo * xscale[b0 + 1, c],
                                            s_hi * xscale[b0 + 1, c], minus_z)
                        if m > 2:
                            a2 = _awq_block(a2, low, high, h2, l2, u2, c, s_lo * xscale[b0 + 2, c],
                                            s_hi * xscale[b0 + 2, c], minus_z)
                        if m > 3:
                            a3 = _awq_block(a3, low, high, h3, l3, u3, c, s_lo * xscale[b0 + 3, c],
                                            s_hi * xscale[b0 + 3, c], minus_z)
                out[b0, n] = hsum(a0)
                if m > 1:
                    out[b0 + 1, n] = hsum(a1)
                if m > 2:
                    out[b0 + 2, n] = hsum(a2)
                if m > 3:
                    out[b0 + 3, n] = hsum(a3)


@njit(cache=True, fastmath=True, nogil=True)
def _awq_rows_plain(xq, xscale, xsum, qweight, scales, zeros, lo, hi, out):
    """_awq_rows_simd in plain loops (CPUs without AVX2): same arguments, same result."""
    n_rows_b = xq.shape[0]
    n_chunks = qweight.shape[1] // 8
    halves_per_group = 2 * n_chunks // scales.shape[1]
    for n in range(lo, hi):
        row = qweight[n]
        for b in range(n_rows_b):
            total = np.float32(0.0)
            for c in range(n_chunks):
                x_hi, x_lo = xq[b, 0, 64 * c : 64 * c + 64], xq[b, 1, 64 * c : 64 * c + 64]
                for half in range(2):  # inputs 32*half .. 32*half+31 of the block: words 4*half..4*half+3
                    dot = np.int32(0)
                    for w in range(4 * half, 4 * half + 4):  # word w: inputs 8w..8w+7, evens at 4w+p, odds at 32+4w+p
                        word = np.int32(row[8 * c + w])
                        for p in range(4):
                            even, odd = 4 * w + p, 32 + 4 * w + p
                            dot += np.int32((word >> np.int32(8 * p)) & np.int32(15)) * \
                                (DIGIT * np.int32(x_hi[even]) + np.int32(x_lo[even]))
                            dot += np.int32((word >> np.int32(8 * p + 4)) & np.int32(15)) * \
                                (DIGIT * np.int32(x_hi[odd]) + np.int32(x_lo[odd]))
                    g = (2 * c + half) // halves_per_group
                    dot -= np.int32(np.int32(zeros[n, g]) * xsum[b, 8 * c + 4 * half])
                    total += scales[n, g] * xscale[b, c] * np.float32(dot)
            out[b, n] = total


awq_rows_q = _awq_rows_simd if AVX2 else _awq_rows_plain


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def awq_matvec_q(xq, xscale, xsum, qweight, scales, zeros, out, n_tasks):
    """out = X @ W^T for B converted activation rows, the N outputs split into ``n_tasks`` parallel ranges.

    xq (B, 2, K) int8 digits in kernel order; xscale (B, K/64) f32, xsum (B, K/8) int32 (``quantize_rows``);
    qweight (N, K/8) int32; scales (N, G) f32, zeros (N, G) u8, the group size K/G 32 or a multiple of 64;
    out (B, N) f32.
    """
    n_out = qweight.shape[0]
    for t in prange(n_tasks):
        awq_rows_q(xq, xscale, xsum, qweight, scales, zeros, t * n_out // n_tasks, (t + 1) * n_out // n_tasks, out)


# --- int8 weights (the lm_head's screen) ------------------------------------------------------------


@njit(inline="always")
def _int8_block(acc, u0, w0, u1, w1, x_hi, c, xs):
    """acc + block c's products scaled by xs: weights w0, w1 (and |w|: u0, u1) in two 32-byte halves, s8 x s8."""
    d0 = madd_pairs(madd_u8s8(u0, sign_i8(load_bytes(x_hi, 64 * c), w0)))
    d1 = madd_pairs(madd_u8s8(u1, sign_i8(load_bytes(x_hi, 64 * c + 32), w1)))
    return scale_add(acc, add_i32(d0, d1), xs, xs)


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
