"""kernels/exp.py's exp against float64 numpy, and the kernels that call it (SiLU; the attentions are in
test_kernels_fast.py)."""

import numpy as np
import pytest
from numba import njit

from awqinfer.kernels.activations import silu_mul
from awqinfer.kernels.exp import HIGHEST, LOWEST, exp_f32
from awqinfer.kernels.fastmath import FASTMATH


def _mapped(fastmath):
    """exp_f32 over an array, compiled under ``fastmath`` as the kernels that inline it are."""
    @njit(fastmath=fastmath)
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = exp_f32(x[i])
    return apply


@pytest.mark.parametrize("fastmath", [FASTMATH, True, False], ids=["parallel kernels' flags", "full", "none"])
def test_exp_matches_float64_within_a_few_ulp(fastmath):
    """A grid of a million points over [-87, 88], and both sides of every point where round(x / ln 2) changes."""
    grid = np.linspace(LOWEST, HIGHEST, 1_000_001, dtype=np.float32)
    halves = ((np.arange(-125, 127) + 0.5) * np.log(2)).astype(np.float32)  # n's rounding boundaries
    x = np.concatenate([grid, halves, np.nextafter(halves, np.float32(0)), [0.0, -0.0, 1e-30, -1e-30]])
    x = x.astype(np.float32)
    out = np.empty_like(x)
    _mapped(fastmath)(x, out)
    want = np.exp(x.astype(np.float64))
    assert np.all(np.isfinite(out))
    assert np.max(np.abs(out - want) / want) < 4e-7  # ~3 ulp; expf itself is within ~1
    assert out[x == 0].tolist() == [1.0, 1.0]


def test_exp_clamps_to_normal_floats_at_both_ends():
    """Past the clamp the result stays e^LOWEST or e^HIGHEST: finite, positive, never a NaN or a wrapped exponent."""
    x = np.array([-np.inf, -1e30, -200.0, -88.0, LOWEST, HIGHEST, 89.0, 200.0, 1e30, np.inf], np.float32)
    out = np.empty_like(x)
    _mapped(FASTMATH)(x, out)
    low, high = np.exp(np.float64(LOWEST)), np.exp(np.float64(HIGHEST))
    np.testing.assert_allclose(out[:5], low, rtol=4e-7)
    np.testing.assert_allclose(out[5:], high, rtol=4e-7)
    assert np.all(out > 0) and np.all(np.isfinite(out))


def test_silu_mul_matches_numpy_across_magnitudes():
    """silu(g) * up for gates from -1e4 to 1e4 (exp's clamp at both ends) and 0."""
    rng = np.random.default_rng(5)
    gate = np.concatenate([rng.standard_normal(500) * 4, [0.0, -90.0, 90.0, -1e4, 1e4, -87.5, 88.5]])
    gate = gate.astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    out = np.full((1, gate.size), np.nan, np.float32)
    silu_mul(np.concatenate([gate, up])[None, :], out)
    g = gate.astype(np.float64)
    with np.errstate(over="ignore"):  # e^1e4 is inf in float64 too: silu(-1e4) = -0
        want = g / (1 + np.exp(-g)) * up
    np.testing.assert_allclose(out[0], want, rtol=1e-6, atol=1e-30)
