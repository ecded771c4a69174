"""4-bit round-to-nearest per group, as AutoAWQ computes it, and AutoAWQ's tensors for one linear.

AutoAWQ's ``pseudo_quantize_tensor`` (``awq/quantize/quantizer.py``), zero-point
variant: per group of g inputs, scale = (max - min) / 15, zero = round(-min / scale),
code = clamp(round(w / scale) + zero, 0, 15). Both the RTN method and the AWQ
search (which quantises candidate weights many times) use these functions.
"""

from __future__ import annotations

import numpy as np

from ..kernels.awq import pack_awq

MAX_INT = 15  # 4-bit codes 0..15


def rtn_quantize(weight: np.ndarray, group_size: int):
    """Round-to-nearest asymmetric 4-bit per group of ``group_size`` inputs, as AutoAWQ's pseudo_quantize_tensor.

    weight (N, K) f32 -> codes (N, K) uint8, zeros (N, K/g) uint8, scales (N, K/g) f16, with
    W ~ (codes - zero) * scale. The scale is rounded to fp16 before the codes are chosen, so the
    codes are the best ones for the scale actually stored.
    """
    n, k = weight.shape
    w = weight.reshape(n, k // group_size, group_size)
    lo, hi = w.min(axis=2), w.max(axis=2)
    scales = np.maximum(hi - lo, 1e-5) / MAX_INT
    zeros = np.clip(np.round(-lo / scales), 0, MAX_INT)
    scales = scales.astype(np.float16)
    codes = np.clip(np.round(w / scales.astype(np.float32)[..., None]) + zeros[..., None], 0, MAX_INT)
    return codes.astype(np.uint8).reshape(n, k), zeros.astype(np.uint8), scales


def fake_quantize(weight: np.ndarray, group_size: int) -> np.ndarray:
    """``weight`` (N, K) f32 after a round trip through ``rtn_quantize``: what the 4-bit model computes with."""
    codes, zeros, scales = rtn_quantize(weight, group_size)
    n, k = weight.shape
    q = codes.reshape(n, k // group_size, group_size).astype(np.float32) - zeros[..., None]
    return (q * scales.astype(np.float32)[..., None]).reshape(n, k)


def awq_tensors(weight: np.ndarray, group_size: int) -> dict[str, np.ndarray]:
    """An nn.Linear weight (N, K) f32 -> AutoAWQ's ``qweight``, ``qzeros``, ``scales`` (see kernels/awq.py)."""
    codes, zeros, scales = rtn_quantize(weight, group_size)
    return {"qweight": pack_awq(codes.T), "qzeros": pack_awq(zeros.T), "scales": np.ascontiguousarray(scales.T)}
