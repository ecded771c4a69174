"""The integer-dot decode GEMVs (kernels/qdot.py) against plain numpy, for B = 1..17 activation rows.

Both twins of each kernel run here (the SIMD one where this CPU has AVX2, the plain-loop one
always), so a machine without AVX2 still tests what it would run. Two questions are kept apart:
the integer kernels against numpy on the same converted activations (only float rounding may
differ), and the conversion's own error against f32 activations (the documented trade: 15-bit
fixed point per 64 inputs for AWQ, int8 for the lm_head's screen).
"""

import numpy as np
import pytest
from numba import njit

from awqinfer.kernels import int8_screen, qdot, simd
from awqinfer.kernels.int8_screen import int8_matvec_q
from awqinfer.kernels.qdot import ACT_BLOCK, DIGIT, FIXED_MAX, STEP, awq_matvec_q, quantize_rows, to_kernel_order
from awqinfer.kernels.simd import f32x8, hsum, load_bytes, scale_add_lanes, zeros_f32x8
from oracle import kernel_layout_weight
from test_kernels_fast import _kernel_layout

AWQ_TWINS = [qdot._awq_rows_plain] + ([qdot._awq_rows_simd] if simd.AVX2 else [])
INT8_TWINS = [int8_screen._int8_rows_plain] + ([int8_screen._int8_rows_simd] if simd.AVX2 else [])


def _quantize(x):
    """quantize_rows on fresh buffers: xq (B, 2, K) int8, xscale (B, K/64) f32, xsum (B, K/8) int32."""
    b, k = x.shape
    xq = np.full((b, 2, k), 99, np.int8)
    xscale = np.full((b, k // ACT_BLOCK), np.nan, np.float32)
    xsum = np.full((b, k // 8), 12345, np.int32)
    quantize_rows(x, xq, xscale, xsum)
    return xq, xscale, xsum


def _natural(codes):
    """(B, K) values in kernel order -> natural order."""
    b, k = codes.shape
    blocks = codes.reshape(b, k // ACT_BLOCK, 2, ACT_BLOCK // 2)  # [evens | odds] per block
    return np.stack([blocks[:, :, 0], blocks[:, :, 1]], axis=3).reshape(b, k)


def _dequantized(xq, xscale, digits=2):
    """The activations quantize_rows stands for (both digits, or the hi digits alone), natural order, float64."""
    b, _, k = xq.shape
    v = DIGIT * xq[:, 0].astype(np.float64) + (xq[:, 1] if digits == 2 else 0)
    return (_natural(v).reshape(b, k // ACT_BLOCK, ACT_BLOCK) * xscale[:, :, None]).reshape(b, k)


def test_quantize_rows_matches_numpy():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 320)) * rng.uniform(0.01, 100, (3, 1))).astype(np.float32)
    x[1, 64:128] = 0.0  # an all-zero block: scale 0, digits 0, no division by zero
    xq, xscale, xsum = _quantize(x)
    blocks = x.reshape(3, 5, ACT_BLOCK)
    want_scale = np.abs(blocks).max(axis=2) / FIXED_MAX
    np.testing.assert_allclose(xscale, want_scale, rtol=1e-6)
    assert xscale[1, 1] == 0 and not xq[:, :, 64:128][1].any()
    hi, lo = xq[:, 0].astype(np.int64), xq[:, 1].astype(np.int64)
    assert np.abs(hi).max() == 127 and np.abs(lo).max() <= DIGIT // 2
    v = _natural(DIGIT * hi + lo).reshape(3, 5, ACT_BLOCK)
    safe = np.where(want_scale > 0, want_scale, 1)
    assert np.abs(v - blocks / safe[:, :, None]).max() <= 0.5 + 1e-2  # rounded to the nearest step
    halves = v.reshape(3, 5, 2, 32).sum(axis=3)  # natural order: inputs 0-31 and 32-63 of each block
    # per STEP blocks, 8 lanes: their first halves' sums, then their second halves'; block 4, after the last
    # whole step, has 8 lanes of its own: (first, 0, 0, 0, second, 0, 0, 0); zeros in the lanes after
    assert xsum.shape == (3, 40) and STEP == 4
    lanes = xsum[:, :16].reshape(3, 2, 2, 4)  # (row, step or lone block, half, lane)
    np.testing.assert_array_equal(lanes[:, 0].transpose(0, 2, 1), halves[:, :4])
    np.testing.assert_array_equal(lanes[:, 1, :, 0], halves[:, 4])
    assert not lanes[:, 1, :, 1:].any() and not xsum[:, 16:].any()


@pytest.mark.parametrize("rows", AWQ_TWINS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("n,k,group", [(8, 64, 64), (96, 576, 64), (37 * 8, 1536, 64), (40, 1024, 128), (24, 192, 32),
                                     (16, 320, 32), (16, 640, 128), (24, 1024, 256), (24, 768, 192)])
def test_awq_q8_matches_numpy_for_1_to_17_rows(monkeypatch, rows, n, k, group):
    """Every batch size 1..17, row counts that leave partial chunks, groups of half a block to four blocks
    (and 192 inputs, three blocks: groups that straddle a step), with and without a partial last step."""
    monkeypatch.setattr(qdot, "awq_rows_q", rows)
    rng = np.random.default_rng(n + k + group)
    qweight, scales, zeros = _kernel_layout(rng, n, k, group)
    w = kernel_layout_weight(qweight, scales, zeros)
    x = rng.standard_normal((17, k)).astype(np.float32)
    for b in range(1, 18):
        xq, xscale, xsum = _quantize(x[:b])
        want = _dequantized(xq, xscale) @ w.T
        out = np.full((b, n), np.nan, np.float32)
        chunks = 3  # n / 3 is not a whole number of rows for most n: uneven chunks
        awq_matvec_q.py_func(xq, xscale, xsum, qweight, scales, zeros, out, chunks)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("rows", AWQ_TWINS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("group", [32, 64, 128])
def test_awq_q8_extremes_do_not_overflow(monkeypatch, rows, group):
    """The largest integer terms: codes all 0 or all 15 against zero points 15 or 0, every input at the
    block's full scale (|v| = FIXED_MAX), 1..5 rows: the zero point's product with a half block's
    activation sum (15 x 32 x FIXED_MAX) and the dot products stay exact."""
    monkeypatch.setattr(qdot, "awq_rows_q", rows)
    n, k = 4, 256
    qweight = np.zeros((n, k // 8), np.int32)
    qweight[1::2] = -1  # every nibble 15
    zeros = np.zeros((n, k // group), np.uint8)
    zeros[:2] = 15  # rows 0, 1: codes 0 and 15 against z = 15; rows 2, 3: against z = 0
    scales = np.ones((n, k // group), np.float32)
    x = np.ones((5, k), np.float32)
    x[1] *= -1
    x[2, ::2] *= -1
    x[3, :k // 2] *= -1
    x[4] *= np.linspace(-1, 1, k, dtype=np.float32)
    for b in range(1, 6):
        xq, xscale, xsum = _quantize(x[:b])
        want = _dequantized(xq, xscale) @ kernel_layout_weight(qweight, scales, zeros).T
        out = np.full((b, n), np.nan, np.float32)
        awq_matvec_q.py_func(xq, xscale, xsum, qweight, scales, zeros, out, 2)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("rows", INT8_TWINS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("n,k", [(5, 64), (131, 576), (64, 1024)])
def test_int8_q8_matches_numpy_for_1_to_17_rows(monkeypatch, rows, n, k):
    monkeypatch.setattr(int8_screen, "int8_rows_q", rows)
    rng = np.random.default_rng(n + k)
    q8 = rng.integers(-127, 128, (n, k)).astype(np.int8)
    wscale = rng.uniform(0.001, 0.02, n).astype(np.float32)
    w = q8.astype(np.float64) * wscale[:, None]
    x = rng.standard_normal((17, k)).astype(np.float32)
    for b in range(1, 18):
        xq, xscale, _ = _quantize(x[:b])
        want = _dequantized(xq, xscale, digits=1) @ w.T  # the screen reads the hi digits
        out = np.full((b, n), np.nan, np.float32)
        int8_matvec_q.py_func(xq, xscale, to_kernel_order(q8), wscale, out, 4)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=2e-5 * np.abs(want).max())


def test_compiled_kernels_run_the_chosen_twin():
    """The parallel (compiled) entry points agree with their twins, on the path this CPU takes."""
    rng = np.random.default_rng(1)
    qweight, scales, zeros = _kernel_layout(rng, 72, 512, 128)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    xq, xscale, xsum = _quantize(x)
    out = np.empty((2, 72), np.float32)
    awq_matvec_q(xq, xscale, xsum, qweight, scales, zeros, out, 4)
    want = _dequantized(xq, xscale) @ kernel_layout_weight(qweight, scales, zeros).T
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=2e-5 * np.abs(want).max())
    assert qdot.awq_rows_q is (qdot._awq_rows_simd if simd.AVX2 else qdot._awq_rows_plain)


def test_activation_conversion_error_is_within_the_documented_bound():
    """Fixed-point activations (AWQ) and their hi digits (the int8 screen) against f32 activations.

    Relative RMS error of the outputs, Gaussian activations, and with a few large outliers per
    row as real hidden states have (the blocks holding them lose resolution).
    """
    rng = np.random.default_rng(2)
    n, k = 512, 1536
    qweight, scales, zeros = _kernel_layout(rng, n, k, 64)
    w = kernel_layout_weight(qweight, scales, zeros)
    w -= w.mean(axis=1, keepdims=True)  # centred rows, as trained weights are: outputs not dominated by the mean
    for outliers, fixed_bound, int8_bound in ((0, 5e-5, 8e-3), (8, 1.5e-4, 2e-2)):
        x = rng.standard_normal((4, k)).astype(np.float32)
        x[:, rng.integers(0, k, outliers)] *= 20
        xq, xscale, _ = _quantize(x)
        exact = x.astype(np.float64) @ w.T
        for digits, bound in ((2, fixed_bound), (1, int8_bound)):
            approx = _dequantized(xq, xscale, digits) @ w.T
            rel = np.sqrt(np.mean((approx - exact) ** 2) / np.mean(exact ** 2))
            assert bound / 20 < rel < bound, (outliers, digits, rel)


def test_half_to_f32_is_exact_on_every_half():
    """Both ways of widening IEEE halves (F16C and integer operations) give numpy's value for all 65536."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    for widen in [simd._half_to_f32_plain] + ([simd._half_to_f32_f16c] if simd.AVX2 else []):
        @njit
        def widen_all(b, out):
            for i in range(b.shape[0]):
                out[i] = widen(b[i])
        out = np.empty(65536, np.float32)
        widen_all(bits, out)
        np.testing.assert_array_equal(out.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])
        assert np.isnan(out[np.isnan(want)]).all()



def _lanes(dot):
    """A compiled f(a, b, c, d) -> (n, 8) f32: ``dot(a, b, c, d, i)``'s I32x8 for i = 0..n-1, lane
    by lane, n = a.nbytes // 32 (every lane here is below 2^24 in magnitude: exact as f32)."""
    @njit
    def lanes(a, b, c, d):
        out = np.zeros((a.nbytes // 32, 8), np.float32)
        for i in range(out.shape[0]):
            v = dot(a, b, c, d, i)
            for j in range(8):
                pick = f32x8(np.float32(j == 0), np.float32(j == 1), np.float32(j == 2), np.float32(j == 3),
                             np.float32(j == 4), np.float32(j == 5), np.float32(j == 6), np.float32(j == 7))
                out[i, j] = hsum(scale_add_lanes(zeros_f32x8(), v, pick))
        return out
    return lanes


@pytest.mark.skipif(not simd.VNNI, reason="this CPU has no AVX-VNNI or AVX512-VNNI: the AVX2 path runs (tested above)")
def test_vnni_dots_equal_the_avx2_ones_lane_by_lane():
    """The VNNI byte products (``vpdpbusd``) give the very I32x8 the AVX2 ones do, at the digits' and weights'
    extremes too: so every kernel's output is the same bit for bit on either path."""
    rng = np.random.default_rng(11)
    k = 64 * 40
    row = rng.integers(-(2**31), 2**31, k // 8, dtype=np.int64).astype(np.int32)
    row[:16] = -1  # two chunks of nibbles all 15
    hi = rng.integers(-127, 128, k).astype(np.int8)
    lo = rng.integers(-64, 65, k).astype(np.int8)
    hi[:128], lo[:128] = 127, 64
    hi[64:128], lo[64:128] = -127, -64

    def chunk(dot):
        return njit(lambda row, hi, lo, unused, c: dot(row, hi, lo, c))
    got = _lanes(chunk(qdot._chunk_dot_vnni))(row, hi, lo, row)
    np.testing.assert_array_equal(got, _lanes(chunk(qdot._chunk_dot_avx2))(row, hi, lo, row))
    assert np.abs(got).max() > 2**20  # the extremes were reached

    def halves(dot):  # the int8 screen's: |w| (u8, up to 128) against x * sign(w) (s8)
        return njit(lambda u, s, u2, s2, i: dot(load_bytes(u, 32 * i), load_bytes(s, 32 * i), load_bytes(u2, 32 * i),
                                                 load_bytes(s2, 32 * i)))
    u = rng.integers(0, 129, (2, k)).astype(np.uint8)
    u[:, :32] = 128
    sx = rng.integers(-127, 128, (2, k)).astype(np.int8)
    sx[:, :32] = -127
    np.testing.assert_array_equal(_lanes(halves(int8_screen._halves_dot_vnni))(u[0], sx[0], u[1], sx[1]),
                                  _lanes(halves(int8_screen._halves_dot_avx2))(u[0], sx[0], u[1], sx[1]))
