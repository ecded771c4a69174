"""Linear layers as drop-in objects: ``y = linear(x)`` whatever the weight format.

    DenseLinear   float weights, widened to f32 at load (Numba has no CPU float16)
    HalfLinear    f16/bf16 weights kept as stored (memory-mapped), widened inside the kernels:
                  the lm_head, the largest matrix of a small model, at half the bytes
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
from ...kernels.dense import dense_gemm, dense_gemv, half_gemm
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
        return replace(self, **{f.name: getattr(self, f.name)[l] for f in fields(self)
                                if hasattr(getattr(self, f.name), "shape")})


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
class HalfLinear(Linear):
    """16-bit float weights in nn.Linear's layout, as the checkpoint stores them; the kernels widen them exactly."""

    bits: np.ndarray  # (N, K) uint16: IEEE half, or bfloat16 if bf16
    bf16: bool = False
    bias: np.ndarray | None = None  # (N,) f32

    out_features = property(lambda self: self.bits.shape[0])
    in_features = property(lambda self: self.bits.shape[1])

    def gemv(self, x, out):
        dense_gemv(x, self.bits, out, self.bf16)

    def gemm(self, x, out):
        half_gemm(x, self.bits, self.bf16, out)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1 widened to a new f32 array (hi - lo, K)."""
        raw = self.bits[lo:hi]
        return widen(raw if self.bf16 else raw.view(np.float16), self.bf16)

    def to_dense(self) -> DenseLinear:
        """The same weights as a DenseLinear (f32, twice the memory): for backends without 16-bit kernels."""
        return DenseLinear(self.rows(0, self.out_features), self.bias)


@dataclass
class AwqLinear(Linear):
    """AWQ 4-bit weights in the kernel layout (kernels/awq.py)."""

    qweight: np.ndarray  # (N, K/8) int32
    scales: np.ndarray  # (N, G) f32
    zeros: np.ndarray  # (N, G) u8, zero points 0..15
    bias: np.ndarray | None = None  # (N,) f32

    out_features = property(lambda self: self.qweight.shape[0])
    in_features = property(lambda self: self.qweight.shape[1] * 8)

    def gemv(self, x, out):
        awq_gemv(x, self.qweight, self.scales, self.zeros, out)

    def gemm(self, x, out):
        awq_gemm(x, self.qweight, self.scales, self.zeros, out)


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

    def __post_init__(self):
        # A plain ndarray view of the same pages: np.memmap's indexing runs Python code (its
        # __getitem__ and __array_finalize__), ~50 us of a decode step's lookup.
        self.table = self.table.view(np.ndarray)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return widen(self.table[ids], self.bf16)

    def as_linear(self) -> DenseLinear | HalfLinear:
        """The table as a tied lm_head (``stored_linear``)."""
        return stored_linear(self.table, self.bf16)


def stored_linear(raw: np.ndarray, bf16: bool = False) -> DenseLinear | HalfLinear:
    """A float weight (N, K) as stored (f32, f16, or bf16 bits as uint16) -> a Linear without widening 16 bits.

    16-bit weights become a HalfLinear over the same memory (a memory-mapped file stays mapped);
    anything else a DenseLinear of f32.
    """
    if bf16 or raw.dtype == np.float16:
        return HalfLinear(raw.view(np.uint16), bf16)
    return DenseLinear(widen(raw))


def awq_to_kernel_layout(qweight, qzeros, scales, out_q, out_s, out_z) -> None:
    """One AutoAWQ linear (checkpoint layout) -> the kernel layout, into (N, K/8), (N, G), (N, G) buffers.

    qweight int32 [K, N/8], qzeros int32 [G, N/8], scales f16/f32 [G, N] as stored.
    """
    columns = np.ascontiguousarray(np.asarray(qweight).view(np.uint32).T)  # [N/8, K]: one pack of 8 outputs a row
    repack_words(columns, np.array(AWQ_PACK_ORDER, np.int64), out_q.view(np.uint32))
    out_s[...] = np.asarray(scales, dtype=np.float32).T  # [N, G]
    out_z[...] = unpack_awq(np.asarray(qzeros)).T


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
