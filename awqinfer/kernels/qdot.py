"""Integer-dot GEMVs for decoding: fixed-point activations against 4-bit AWQ weights, B rows per call.

A one-token 4-bit GEMV spends its time unpacking nibbles into floats (docs/PERFORMANCE.md,
4-bit GEMV item 6). Here the activations are converted instead, once per call, and each
32-byte chunk of weights is multiplied as bytes (``vpmaddubsw``, kernels/simd.py) into i32
sums; one float multiply-add per half block applies both scales, for four blocks at a time.

Activations: 15-bit fixed point in two int8 digits. Each block of ACT_BLOCK = 64 inputs gets
one scale xs = absmax / FIXED_MAX, and each input the integer v = rint(x / xs), |v| <= 127 * 128,
stored as digits v = 128 * hi + lo with hi in -127..127 and lo in -64..64. A product with a
weight byte is then two byte products: q.v = 128 (q.hi) + (q.lo), summed by ``vpmaddwd`` with
128s and with 1s. The rounding is 1/32512 of the block's absmax, ~3e-5 relative per output:
greedy tokens stay the f32 reference's (with int8 activations alone, as llama.cpp's Q8, error
~0.5%, the default model's greedy text parted from the reference's within 10-17 tokens on 3
of 6 test prompts). The hi digits alone are an int8 quantization with scale 128 xs: the int8
lm_head's screen (kernels/int8_screen.py) reads just those.

    y[b, n] = sum_c  s[n, g] * xs[b, c] * ((q[n] . v[b])_c  -  z[n, g] * sum(v[b])_c)

with c the input blocks (each half block: groups of 32 take one scale and zero point per half),
g the weight group of the block, z the group's zero point (kernels/awq.py's layout, unchanged).
The zero point's term is integer, added to the block's integer dot product before the one
conversion to float: exact (the half-block sums times the negated zero points). Formed in float
beside the dot product, as a separate sum per row, it took half the GEMV's time at K = 576
(docs/PERFORMANCE.md, item 17).

Steps of four blocks. A block's i32 dot products leave ``vpmaddwd`` spread over 8 lanes; two
rounds of ``vphaddd`` fold four blocks' into one vector of their 8 half-block sums (block c + i's
first half in lane i, its second in lane 4 + i). The rest of the work is then done once per four
blocks: the zero points' term (the activations' half-block sums laid out the same way by
``quantize_rows``), the conversion to float, and the multiply-add by s * xs, whose scales and zero
points load as vectors in the layout of each group size (``_step_scales``). Done per block, that
scalar work was as large as the byte products: steps are 1.15-1.5x faster (docs/PERFORMANCE.md,
item 20). The blocks after the last whole step (K/64 not a multiple of 4) go one at a time, first.

Input order. With the kernel layout's nibble order (kernels/awq.py), the low nibbles of 32
consecutive bytes of a row are the even inputs of a 64-input block and the high nibbles the odd
ones. Activations are converted into that order ("kernel order": per block, the 32 even inputs,
then the 32 odd), so unpacking is one AND and one shift per 32 bytes; the int8 lm_head's
columns are permuted to the same order at load (``to_kernel_order``).

Batch-ready. The kernel takes B activation rows (xq (B, 2, K)) and writes out (B, N). It
computes each (weight row, activation row) pair with the same function at any B (batch
invariance), its weight rows in blocks that stay in cache while every activation row passes. The
SIMD kernel needs AVX2 (kernels/simd.py); elsewhere a plain-loop twin of the same signature runs,
chosen when this module is imported. Both are tested against numpy. Where the CPU also has VNNI,
``vpdpbusd`` sums each digit's byte products straight into i32 lanes (``_chunk_dot_vnni``): the
same integers as the AVX2 pairs of instructions, so the same outputs bit for bit, 1.1-1.2x faster.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fastmath import FASTMATH
from .simd import AVX2, VNNI, add_i16, add_i32, dot_u8s8, f32x8, hadd_i32, halves_i32, hsum, i32x8, \
    lanes_of, load_bytes, load_i32x8, madd_pairs, madd_pairs_x128, madd_u8s8, mul_f32, mul_i32, nibbles, scale_add, \
    scale_add_lanes, x128_add_i32, zeros_f32x8, zeros_i32x8

ACT_BLOCK = 64  # inputs per activation scale: one 32-byte chunk of 4-bit weights
DIGIT = 128  # v = DIGIT * hi + lo
FIXED_MAX = 127 * DIGIT  # the largest |v|: hi stays within int8
ROW_BLOCK = 16  # weight rows per block of the SIMD kernels (revisited from cache for each activation row)
STEP = 4  # blocks per step of the AWQ kernel: their 8 half-block dot products fill one I32x8


def to_kernel_order(w: np.ndarray) -> np.ndarray:
    """Columns of w (N, K) permuted to kernel order: per 64-column block, the even columns, then the odd."""
    n, k = w.shape
    blocks = w.reshape(n, k // ACT_BLOCK, ACT_BLOCK)
    return np.ascontiguousarray(np.concatenate([blocks[..., 0::2], blocks[..., 1::2]], axis=2).reshape(n, k))


@njit(inline="always")
def _sum_lane(c, n_chunks):
    """The lane of block c's first-half activation sum in a row's xsum; its second half's is STEP lanes on.

    Steps of STEP blocks hold their blocks' first halves' sums in lanes 0-3 and second halves' in 4-7, as
    ``_step`` adds them; a block after the last whole step has 8 lanes of its own, (first, 0, 0, 0,
    second, 0, 0, 0), as ``_block`` adds them.
    """
    full = n_chunks // STEP
    return 8 * (c // STEP) + c % STEP if c < STEP * full else 8 * full + 8 * (c - STEP * full)


@njit(cache=True, fastmath=True, nogil=True)
def quantize_rows(x, xq, xscale, xsum):
    """Activations -> fixed point in kernel order, as two int8 digits, one scale per ACT_BLOCK inputs.

    x (B, K) f32; xq (B, 2, K) int8: xq[b, 0] the hi digits, xq[b, 1] the lo digits; xscale
    (B, K/64) f32 = absmax / FIXED_MAX of each block (0 for a zero block); xsum (B, K/8) int32: the
    sums of v over each block's halves (inputs 0-31 and 32-63 of it, in natural order), laid out as a
    step's dot products are (``_row_dot``): per STEP blocks, 8 lanes holding their first halves' sums,
    then their second halves' (``_sum_lane``); zero in the other lanes (at most K/8 are used).
    |sum| <= 32 * FIXED_MAX.
    """
    half = ACT_BLOCK // 2
    for b in range(x.shape[0]):
        xb, hi_digits, lo_digits = x[b], xq[b, 0], xq[b, 1]
        xsum[b, :] = 0
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
            lane = _sum_lane(c, xscale.shape[1])
            xsum[b, lane] = first
            xsum[b, lane + STEP] = second


# --- AWQ 4-bit weights ------------------------------------------------------------------------------

# How a row's groups meet a step's 8 lanes (block c + i's first half in lane i, its second in lane 4 + i):
# the scales and zero points of one step of each group size, as loaders of (row, first group's index).
GROUPS_32, GROUPS_64, GROUPS_128, GROUPS_WHOLE, GROUPS_OTHER = 0, 1, 2, 3, 4
_scales_32, _zeros_32 = lanes_of("f", 8, (0, 2, 4, 6, 1, 3, 5, 7)), lanes_of("z", 8, (0, 2, 4, 6, 1, 3, 5, 7))
_scales_64, _zeros_64 = lanes_of("f", 4, (0, 1, 2, 3) * 2), lanes_of("z", 4, (0, 1, 2, 3) * 2)
_scales_128, _zeros_128 = lanes_of("f", 2, (0, 0, 1, 1) * 2), lanes_of("z", 2, (0, 0, 1, 1) * 2)
_scales_whole, _zeros_whole = lanes_of("f", 1, (0,) * 8), lanes_of("z", 1, (0,) * 8)
_blocks_4 = _scales_64  # the four blocks' activation scales xs[c..c+3], twice


@njit(inline="always")
def _groups_kind(n_chunks, n_groups):
    """The GROUPS_* code of ``n_chunks`` blocks of 64 inputs in ``n_groups`` weight groups (of 32, or 64k inputs)."""
    if n_groups == 2 * n_chunks:
        return GROUPS_32
    per = n_chunks // n_groups
    return GROUPS_64 if per == 1 else GROUPS_128 if per == 2 else GROUPS_WHOLE if per % STEP == 0 else GROUPS_OTHER


@njit(inline="always")
def _neg(z):
    """-z as int32 (Numba would widen it to int64)."""
    return np.int32(-np.int32(z))


@njit(inline="always")
def _group(c, half, kind, per):
    """The weight group of block c's half (0: inputs 0-31, 1: 32-63); ``per`` blocks per group."""
    return 2 * c + half if kind == GROUPS_32 else c // per


@njit(inline="always")
def _chunk_dot_avx2(row, hi, lo, c):
    """I32x8: weight chunk c (32 bytes) . activation block c (both digits), lanes 0-3 its first 32 inputs, 4-7 the rest.

    row (K/8,) int32 weights; hi, lo (K,) int8 digits (kernel order). The low nibbles are the block's even
    inputs, the high nibbles its odd ones. Each i16 lane sums 4 products of at most 15 x 127; each i32 lane
    at most 8 x 15 x FIXED_MAX: exact.
    """
    low, high = nibbles(load_bytes(row, 32 * c))
    on_hi = add_i16(madd_u8s8(low, load_bytes(hi, 64 * c)), madd_u8s8(high, load_bytes(hi, 64 * c + 32)))
    on_lo = add_i16(madd_u8s8(low, load_bytes(lo, 64 * c)), madd_u8s8(high, load_bytes(lo, 64 * c + 32)))
    return add_i32(madd_pairs_x128(on_hi), madd_pairs(on_lo))


@njit(inline="always")
def _chunk_dot_vnni(row, hi, lo, c):
    """_chunk_dot_avx2 with VNNI's ``vpdpbusd``: each digit's byte products summed straight into i32 lanes, the
    same sums (nothing saturates in the AVX2 version), in 6 vector operations instead of 9 (docs/PERFORMANCE.md,
    item 24)."""
    low, high = nibbles(load_bytes(row, 32 * c))
    on_hi = dot_u8s8(dot_u8s8(zeros_i32x8(), low, load_bytes(hi, 64 * c)), high, load_bytes(hi, 64 * c + 32))
    on_lo = dot_u8s8(dot_u8s8(zeros_i32x8(), low, load_bytes(lo, 64 * c)), high, load_bytes(lo, 64 * c + 32))
    return x128_add_i32(on_hi, on_lo)


_chunk_dot = _chunk_dot_vnni if VNNI else _chunk_dot_avx2  # bit for bit the same I32x8


@njit(inline="always")
def _step_any(s_row, z_row, xs, c, kind, per):
    """(s * xs, -z) lanes of the step at block c built one by one: any group size."""
    a0, a1, a2, a3 = _group(c, 0, kind, per), _group(c + 1, 0, kind, per), _group(c + 2, 0, kind, per), \
        _group(c + 3, 0, kind, per)
    b0, b1, b2, b3 = _group(c, 1, kind, per), _group(c + 1, 1, kind, per), _group(c + 2, 1, kind, per), \
        _group(c + 3, 1, kind, per)
    x0, x1, x2, x3 = xs[c], xs[c + 1], xs[c + 2], xs[c + 3]
    f = f32x8(s_row[a0] * x0, s_row[a1] * x1, s_row[a2] * x2, s_row[a3] * x3,
              s_row[b0] * x0, s_row[b1] * x1, s_row[b2] * x2, s_row[b3] * x3)
    z = i32x8(_neg(z_row[a0]), _neg(z_row[a1]), _neg(z_row[a2]), _neg(z_row[a3]),
              _neg(z_row[b0]), _neg(z_row[b1]), _neg(z_row[b2]), _neg(z_row[b3]))
    return f, z


@njit(inline="always")
def _step_scales(s_row, z_row, xs, c, kind, per):
    """(s * xs, -z) lanes of a whole step at block c, loaded as the group size lays them out."""
    if kind == GROUPS_32:
        s, z = _scales_32(s_row, 2 * c), _zeros_32(z_row, 2 * c)
    elif kind == GROUPS_64:
        s, z = _scales_64(s_row, c), _zeros_64(z_row, c)
    elif kind == GROUPS_128:
        s, z = _scales_128(s_row, c // 2), _zeros_128(z_row, c // 2)
    else:  # GROUPS_WHOLE: the step lies in one group
        s, z = _scales_whole(s_row, c // per), _zeros_whole(z_row, c // per)
    return mul_f32(s, _blocks_4(xs, c)), z


@njit(inline="always")
def _step(acc, row, s_row, z_row, hi, lo, xs, sums, st, kind, per):
    """acc + blocks 4 st .. 4 st + 3 scaled: their 8 half-block dot products in one I32x8 (``hadd_i32``), less
    z times the halves' activation sums, converted once and multiplied by s * xs lane by lane. Each lane is
    sum (q - z) v over 32 inputs, at most 32 x 15 x FIXED_MAX < 2^24: exact in i32 and in the conversion."""
    c = STEP * st
    d = hadd_i32(hadd_i32(_chunk_dot(row, hi, lo, c), _chunk_dot(row, hi, lo, c + 1)),
                 hadd_i32(_chunk_dot(row, hi, lo, c + 2), _chunk_dot(row, hi, lo, c + 3)))
    f, minus_z = _step_scales(s_row, z_row, xs, c, kind, per) if kind != GROUPS_OTHER else \
        _step_any(s_row, z_row, xs, c, kind, per)
    return scale_add_lanes(acc, add_i32(d, mul_i32(load_i32x8(sums, 32 * st), minus_z)), f)


@njit(inline="always")
def _block(acc, row, s_row, z_row, hi, lo, xs, sums, c, kind, per):
    """acc + block c alone scaled (a block after the last whole step), its activation sums in 8 lanes of its own."""
    a, b = _group(c, 0, kind, per), _group(c, 1, kind, per)
    lane = _sum_lane(c, row.shape[0] // 8)
    zero_term = mul_i32(load_i32x8(sums, 4 * lane), halves_i32(_neg(z_row[a]), _neg(z_row[b])))
    return scale_add(acc, add_i32(_chunk_dot(row, hi, lo, c), zero_term), s_row[a] * xs[c], s_row[b] * xs[c])


@njit(inline="always")
def _row_dot(row, s_row, z_row, hi, lo, xs, sums, kind, per):
    """One weight row . one activation row, STEP blocks at a time: the per-block scalar work (a scale, a zero
    point, a conversion) is done for four blocks at once (docs/PERFORMANCE.md, item 20); the last K/64 % STEP
    blocks one at a time, and first: added last, at the end of the row's chain of additions, they made
    576-wide rows 1.1x slower (item 21).

    row (K/8,) int32; s_row (G,) f32; z_row (G,) u8; hi, lo (K,) int8; xs (K/64,) f32; sums
    (K/8,) int32; kind, per: ``_groups_kind`` and blocks per group.
    """
    n_chunks = row.shape[0] // 8
    full = n_chunks // STEP
    acc = zeros_f32x8()
    for c in range(STEP * full, n_chunks):
        acc = _block(acc, row, s_row, z_row, hi, lo, xs, sums, c, kind, per)
    for st in range(full):
        acc = _step(acc, row, s_row, z_row, hi, lo, xs, sums, st, kind, per)
    return hsum(acc)


@njit(inline="always")
def _rows(xq, xscale, xsum, qweight, scales, zeros, lo, hi, out, kind, per):
    """_awq_rows_simd's loops for one group layout ``kind`` (a constant where it is inlined: its branches fold)."""
    for n0 in range(lo, hi, ROW_BLOCK):
        for b in range(xq.shape[0]):
            h, l, xs, sums = xq[b, 0], xq[b, 1], xscale[b], xsum[b]
            for n in range(n0, min(hi, n0 + ROW_BLOCK)):
                out[b, n] = _row_dot(qweight[n], scales[n], zeros[n], h, l, xs, sums, kind, per)


@njit(cache=True, fastmath=True, nogil=True)
def _awq_rows_simd(xq, xscale, xsum, qweight, scales, zeros, lo, hi, out):
    """out[:, lo:hi] for the rows lo..hi-1, each activation row against each weight row by ``_row_dot``.

    The weight rows go in blocks of ROW_BLOCK, revisited from cache for each activation row, so B rows
    read them from memory once. A row's arithmetic is the same at any B: batch invariance. One copy of
    the loops per group layout, so that no layout's branch is left in the innermost loop.
    """
    n_chunks = qweight.shape[1] // 8
    kind = _groups_kind(n_chunks, scales.shape[1])
    per = max(1, n_chunks // scales.shape[1])
    if kind == GROUPS_32:
        _rows(xq, xscale, xsum, qweight, scales, zeros, lo, hi, out, GROUPS_32, per)
    elif kind == GROUPS_64:
        _rows(xq, xscale, xsum, qweight, scales, zeros, lo, hi, out, GROUPS_64, per)
    elif kind == GROUPS_128:
        _rows(xq, xscale, xsum, qweight, scales, zeros, lo, hi, out, GROUPS_128, per)
    elif kind == GROUPS_WHOLE:
        _rows(xq, xscale, xsum, qweight, scales, zeros, lo, hi, out, GROUPS_WHOLE, per)
    else:
        _rows(xq, xscale, xsum, qweight, scales, zeros, lo, hi, out, GROUPS_OTHER, per)


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
                    dot -= np.int32(np.int32(zeros[n, g]) * xsum[b, _sum_lane(c, n_chunks) + STEP * half])
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
