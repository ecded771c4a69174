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

    y[b, n] = sum_c  s[n, g] * xs[b, c] * (q[n] . v[b])_c  -  s[n, g] * z[n, g] * xs[b, c] * sum(v[b])_c

with c the input blocks, g the weight group of the block (or of each half block: groups of 32
take one scale per half), z the group's zero point (kernels/awq.py's layout, unchanged).

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
from .simd import AVX2, abs_i8, add_i16, add_i32, hsum, load_bytes, madd_pairs, madd_pairs_x128, madd_u8s8, \
    nibbles, scale_add, sign_i8, zeros_f32x8

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
def quantize_rows(x, xq, xscale, xbsum):
    """Activations -> fixed point in kernel order, as two int8 digits, one scale per ACT_BLOCK inputs.

    x (B, K) f32; xq (B, 2, K) int8: xq[b, 0] the hi digits, xq[b, 1] the lo digits; xscale
    (B, K/64) f32 = absmax / FIXED_MAX of each block (0 for a zero block); xbsum (B, K/32) f32 =
    xscale * the sum of v over each half block (inputs 0-31 and 32-63 of it, in natural order):
    the sums the zero points multiply.
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
            xbsum[b, 2 * c] = scale * np.float32(first)
            xbsum[b, 2 * c + 1] = scale * np.float32(second)


# --- AWQ 4-bit weights ------------------------------------------------------------------------------


@njit(inline="always")
def _awq_block(acc, low, high, hi, lo, c, f_lo, f_hi):
    """acc + chunk c's products scaled by (f_lo, f_hi): nibbles low/high (the 32 even, 32 odd inputs) x block c.

    hi, lo (K,) int8: one activation row's digits. Each i16 lane sums 4 products of at most 15 x 127: no overflow.
    """
    on_hi = add_i16(madd_u8s8(low, load_bytes(hi, 64 * c)), madd_u8s8(high, load_bytes(hi, 64 * c + 32)))
    on_lo = add_i16(madd_u8s8(low, load_bytes(lo, 64 * c)), madd_u8s8(high, load_bytes(lo, 64 * c + 32)))
    return scale_add(acc, add_i32(madd_pairs_x128(on_hi), madd_pairs(on_lo)), f_lo, f_hi)


@njit(cache=True, nogil=True)
def _zero_point_term(s_row, z_row, xb_row, split):
    """sum over groups of s*z times the group's activation sum: what one output subtracts for its zero points.

    s_row (G,) f32, z_row (G,) u8: one weight row's scales and zero points; xb_row (K/32,) f32 = one
    activation row's half-block sums (``quantize_rows``); split: groups of 32 inputs (one per half
    block), else groups of whole blocks.
    Compiled without fastmath, in a fixed order, and called the same way by every loop below, so an
    output does not depend on how many activation rows share the call (a sequence alone or in a batch).
    """
    z = np.float32(0.0)
    if split:
        for h in range(xb_row.shape[0]):
            z += s_row[h] * np.float32(z_row[h]) * xb_row[h]
        return z
    halves = xb_row.shape[0] // z_row.shape[0]
    for g in range(z_row.shape[0]):
        total = np.float32(0.0)
        for h in range(g * halves, (g + 1) * halves):
            total += xb_row[h]
        z += s_row[g] * np.float32(z_row[g]) * total
    return z


@njit(inline="always")
def _awq_rows_one(hi_digits, lo_digits, xs, xb, qweight, scales, zeros, lo, hi, per_group, out):
    """_awq_rows_simd for one activation row and groups of 64 inputs or more, without its branches for
    rows 2-4 (~1.4x faster on small rows). out (N,) f32; the rest as _awq_rows_simd."""
    for n in range(lo, hi):
        row = qweight[n]
        acc = zeros_f32x8()
        for g in range(scales.shape[1]):
            s = scales[n, g]
            for c in range(g * per_group, (g + 1) * per_group):
                low, high = nibbles(load_bytes(row, 32 * c))
                acc = _awq_block(acc, low, high, hi_digits, lo_digits, c, s * xs[c], s * xs[c])
        out[n] = hsum(acc) - _zero_point_term(scales[n], zeros[n], xb, False)


@njit(cache=True, fastmath=True, nogil=True)
def _awq_rows_simd(xq, xscale, xbsum, qweight, scales, zeros, lo, hi, out):
    """out[:, lo:hi] for the rows lo..hi-1: each 32-byte chunk unpacked once, used by up to 4 activation rows.

    Rows go in blocks of ROW_BLOCK (in L1/L2 when a block is revisited for the next 4 activation rows).
    """
    n_rows_b = xq.shape[0]
    n_chunks = qweight.shape[1] // 8  # chunks of 8 words = 32 bytes = 64 inputs
    split = scales.shape[1] == 2 * n_chunks  # groups of 32: each chunk's halves have their own scale
    per_step = 1 if split else n_chunks // scales.shape[1]  # chunks sharing one (pair of) scale(s)
    if n_rows_b == 1 and not split:  # one sequence, groups of 64 or more: the lean loop
        _awq_rows_one(xq[0, 0], xq[0, 1], xscale[0], xbsum[0], qweight, scales, zeros, lo, hi, per_step, out[0])
        return
    for n0 in range(lo, hi, ROW_BLOCK):
        for b0 in range(0, n_rows_b, 4):  # four activation rows per pass: four accumulators in registers
            m = min(4, n_rows_b - b0)
            r1, r2, r3 = b0 + min(1, m - 1), b0 + min(2, m - 1), b0 + min(3, m - 1)  # rows past B repeat the last
            h0, h1, h2, h3 = xq[b0, 0], xq[r1, 0], xq[r2, 0], xq[r3, 0]
            l0, l1, l2, l3 = xq[b0, 1], xq[r1, 1], xq[r2, 1], xq[r3, 1]
            for n in range(n0, min(hi, n0 + ROW_BLOCK)):
                row = qweight[n]
                a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
                for step in range(n_chunks // per_step):
                    g = 2 * step if split else step
                    h = g + 1 if split else g  # the group of each chunk's second half
                    s_lo, s_hi = scales[n, g], scales[n, h]
                    for c in range(step * per_step, (step + 1) * per_step):
                        low, high = nibbles(load_bytes(row, 32 * c))
                        a0 = _awq_block(a0, low, high, h0, l0, c, s_lo * xscale[b0, c], s_hi * xscale[b0, c])
                        if m > 1:
                            a1 = _awq_block(a1, low, high, h1, l1, c, s_lo * xscale[b0 + 1, c], s_hi * xscale[b0 + 1, c])
                        if m > 2:
                            a2 = _awq_block(a2, low, high, h2, l2, c, s_lo * xscale[b0 + 2, c], s_hi * xscale[b0 + 2, c])
                        if m > 3:
                            a3 = _awq_block(a3, low, high, h3, l3, c, s_lo * xscale[b0 + 3, c], s_hi * xscale[b0 + 3, c])
                out[b0, n] = hsum(a0) - _zero_point_term(scales[n], zeros[n], xbsum[b0], split)
                if m > 1:
                    out[b0 + 1, n] = hsum(a1) - _zero_point_term(scales[n], zeros[n], xbsum[b0 + 1], split)
                if m > 2:
                    out[b0 + 2, n] = hsum(a2) - _zero_point_term(scales[n], zeros[n], xbsum[b0 + 2], split)
                if m > 3:
                    out[b0 + 3, n] = hsum(a3) - _zero_point_term(scales[n], zeros[n], xbsum[b0 + 3], split)


@njit(cache=True, fastmath=True, nogil=True)
def _awq_rows_plain(xq, xscale, xbsum, qweight, scales, zeros, lo, hi, out):
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
                    s, sz = scales[n, g], scales[n, g] * np.float32(zeros[n, g])
                    total += s * xscale[b, c] * np.float32(dot) - sz * xbsum[b, 2 * c + half]
            out[b, n] = total


awq_rows_q = _awq_rows_simd if AVX2 else _awq_rows_plain


@njit(cache=True, parallel=True, fastmath=FASTMATH, nogil=True)
def awq_matvec_q(xq, xscale, xbsum, qweight, scales, zeros, out, n_tasks):
    """out = X @ W^T for B converted activation rows, the N outputs split into ``n_tasks`` parallel ranges.

    xq (B, 2, K) int8 digits in kernel order; xscale (B, K/64), xbsum (B, K/32) f32 (``quantize_rows``);
    qweight (N, K/8) int32; scales (N, G) f32, zeros (N, G) u8, the group size K/G 32 or a multiple of 64;
    out (B, N) f32.
    """
    n_out = qweight.shape[0]
    for t in prange(n_tasks):
        awq_rows_q(xq, xscale, xbsum, qweight, scales, zeros, t * n_out // n_tasks, (t + 1) * n_out // n_tasks, out)


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
