"""4-bit round-to-nearest per group, as AutoAWQ computes it, and AutoAWQ's tensors for one linear.

AutoAWQ's ``pseudo_quantize_tensor`` (``awq/quantize/quantizer.py``), zero-point
variant: per group of g inputs, scale = (max - min) / 15, zero = round(-min / scale),
code = clamp(round(w / scale) + zero, 0, 15). Both the RTN method and the AWQ
search (which quantises candidate weights many times) use these functions.
"""

from __future__ import annotations

import numpy as np

from ..checkpoint.awq_layout import pack_awq

MAX_INT = 15  # 4-bit codes 0..15


def grid(w: np.ndarray):
    """The grid of each group of ``w`` (N, G, g) f32: zeros (N, G, 1) f32 (integers 0..15) and scales (N, G) f16."""
    lo, hi = w.min(axis=2, keepdims=True), w.max(axis=2, keepdims=True)
    scales = np.maximum(hi - lo, 1e-5) / MAX_INT
    zeros = np.clip(np.round(-lo / scales), 0, MAX_INT)
    return zeros, scales[..., 0].astype(np.float16)


def _codes(weight: np.ndarray, group_size: int):
    """Float codes (N, G, g), zeros (N, G, 1) f32 and scales (N, G) f16 of ``weight`` (N, K) f32.

    The scale is rounded to fp16 (as stored) before the codes are chosen, so the codes are
    the best ones for the scale actually written.
    """
    n, k = weight.shape
    w = weight.reshape(n, k // group_size, group_size)
    zeros, scales16 = grid(w)
    codes = w / scales16.astype(np.float32)[..., None]
    np.round(codes, out=codes)
    codes += zeros
    np.clip(codes, 0, MAX_INT, out=codes)
    return codes, zeros, scales16


def rtn_quantize(weight: np.ndarray, group_size: int):
    """Round-to-nearest asymmetric 4-bit per group of ``group_size`` inputs, as AutoAWQ's pseudo_quantize_tensor.

    weight (N, K) f32 -> codes (N, K) uint8, zeros (N, K/g) uint8, scales (N, K/g) f16, with
    W ~ (codes - zero) * scale.
    """
    codes, zeros, scales = _codes(weight, group_size)
    return codes.astype(np.uint8).reshape(weight.shape), zeros[..., 0].astype(np.uint8), scales


def fake_quantize(weight: np.ndarray, group_size: int) -> np.ndarray:
    """``weight`` (N, K) f32 after a round trip through 4 bits: what the quantised model computes with."""
    codes, zeros, scales = _codes(weight, group_size)
    codes -= zeros
    codes *= scales.astype(np.float32)[..., None]
    return codes.reshape(weight.shape)


def dequantize(codes: np.ndarray, zeros: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The weights (N, K) f32 that ``rtn_quantize``'s (or GPTQ's) output computes with: (code - zero) * scale."""
    n, k = codes.shape
    groups = zeros.shape[1]
    w = codes.reshape(n, groups, k // groups).astype(np.float32) - zeros[..., None]
    w *= scales.astype(np.float32)[..., None]
    return w.reshape(n, k)


def awq_tensors(codes: np.ndarray, zeros: np.ndarray, scales: np.ndarray) -> dict[str, np.ndarray]:
    """Codes (N, K) u8, zeros (N, K/g) u8, scales (N, K/g) f16 -> AutoAWQ's ``qweight``, ``qzeros``, ``scales``.

    The packing is checkpoint/awq_layout.py's; the arguments are what ``rtn_quantize`` (or GPTQ) returns.
    """
    return {"qweight": pack_awq(codes.T), "qzeros": pack_awq(zeros.T), "scales": np.ascontiguousarray(scales.T)}
