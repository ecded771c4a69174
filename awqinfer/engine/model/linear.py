"""Linear layers as drop-in objects: ``y = linear(x)`` whatever the weight format.

    DenseLinear   float weights, widened to f32 at load (Numba has no CPU float16)
    AwqLinear     AWQ 4-bit, repacked at load from AutoAWQ's layout into the kernels' own
    Int8Linear    int8 weight-only, one scale per output channel, quantized at load

The forward pass never branches on format (gpt-fast's ``quantize.py`` habit): each
class supplies a one-token ``gemv`` and a prompt ``gemm`` kernel. Every array may
carry a leading layer axis, ``(n_layers, ...)``: a stacked Linear holds one projection
of every layer, and ``layer(l)`` is the same class over views of layer ``l``
(``in_features``/``out_features`` describe one layer's views).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from ...kernels.awq import awq_gemm, awq_gemv, repack_words
from ...kernels.dense import dense_gemm, dense_gemv
from ...kernels.int8 import INT8_MAX, int8_gemm, int8_gemv
from ..checkpoint.awq_layout import AWQ_PACK_ORDER, unpack_awq
from ..checkpoint.safetensors import widen


class Linear:
    """y = x @ W^T + b for x (T, K) f32 -> (T, N) f32; subclasses supply the two kernels."""

    bias: np.ndarray | None  # (N,) f32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.empty((x.shape[0], self.out_features))
        if x.shape[0] == 1:
            self.gemv(x[0], out[0])
        else:
            self.gemm(x, out)
        if self.bias is not None:
            self.add_bias(out)
        return out

    def empty(self, shape: tuple) -> np.ndarray:
        """A new f32 output array where the weights live (device twins allocate on the GPU)."""
        return np.empty(shape, np.float32)

    def add_bias(self, out: np.ndarray) -> None:
        """out (T, N) += bias (N,), in place."""
        out += self.bias

    def layer(self, l: int) -> "Linear":
        """Layer ``l`` of a stacked Linear (every array (n_layers, ...)): the same class over views."""
        return replace(self, **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[l]
                                for f in fields(self)})


@dataclass
class DenseLinear(Linear):
    """Float weights in nn.Linear's layout."""

    weight: np.ndarray  # (N, K) f32
    bias: np.ndarray | None = None  # (N,) f32

    out_features = property(lambda self: self.weight.shape[0])
    in_features = property(lambda self: self.weight.shape[1])

    def gemv(self, x, out):
        dense_gemv(x, self.weight, out)

    def gemm(self, x, out):
        dense_gemm(x, self.weight, out)


@dataclass
class AwqLinear(Linear):
    """AWQ 4-bit weights in the kernel layout (kernels/awq.py)."""

    qweight: np.ndarray  # (N, K/8) int32
    scales: np.ndarray  # (N, G) f32
    szeros: np.ndarray  # (N, G) f32, scale * zero
    bias: np.ndarray | None = None  # (N,) f32

    out_features = property(lambda self: self.qweight.shape[0])
    in_features = property(lambda self: self.qweight.shape[1] * 8)

    def gemv(self, x, out):
        awq_gemv(x, self.qweight, self.scales, self.szeros, out)

    def gemm(self, x, out):
        awq_gemm(x, self.qweight, self.scales, self.szeros, out)


@dataclass
class Int8Linear(Linear):
    """Int8 weight-only, symmetric, one scale per output channel (kernels/int8.py)."""

    qweight: np.ndarray  # (N, K) int8
    scales: np.ndarray  # (N,) f32
    bias: np.ndarray | None = None  # (N,) f32

    out_features = property(lambda self: self.qweight.shape[0])
    in_features = property(lambda self: self.qweight.shape[1])

    def gemv(self, x, out):
        int8_gemv(x, self.qweight, self.scales, out)

    def gemm(self, x, out):
        int8_gemm(x, self.qweight, self.scales, out)


@dataclass
class Embedding:
    """Token embeddings, left memory-mapped in the file's dtype; rows widened to f32 on lookup."""

    table: np.ndarray  # (V, H) f32, f16, or bf16 as uint16
    bf16: bool = False

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return widen(self.table[ids], self.bf16)

    def to_float32(self) -> np.ndarray:
        """The whole table as f32 (V, H), for a tied lm_head."""
        return widen(self.table, self.bf16)


def awq_to_kernel_layout(qweight, qzeros, scales, out_q, out_s, out_sz) -> None:
    """One AutoAWQ linear (checkpoint layout) -> the kernel layout, into (N, K/8), (N, G), (N, G) buffers.

    qweight int32 [K, N/8], qzeros int32 [G, N/8], scales f16/f32 [G, N] as stored.
    """
    columns = np.ascontiguousarray(np.asarray(qweight).view(np.uint32).T)  # [N/8, K]: one pack of 8 outputs a row
    repack_words(columns, np.array(AWQ_PACK_ORDER, np.int64), out_q.view(np.uint32))
    s = np.asarray(scales, dtype=np.float32).T  # [N, G]
    out_s[...] = s
    out_sz[...] = s * unpack_awq(np.asarray(qzeros)).astype(np.float32).T


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float weight (N, K) -> (q (N, K) int8, scales (N,) f32): W ~ q * s per output channel, symmetric.

    s = max_k |W[n, k]| / 127, so q and -q are both representable; an all-zero row stays zero.
    """
    w = np.asarray(weight, dtype=np.float32)
    absmax = np.abs(w).max(axis=1)
    scales = (absmax / INT8_MAX).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    q = np.clip(np.rint(w / safe[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scales
