"""The KV cache of one sequence: explicit, its fill level is the position, grown in blocks as it fills.

    k, v: (n_layers, kv_heads, allocated, head_dim), float16 (held as its uint16 bits) or float32

A cache is made for at most ``capacity`` positions (the prompt plus the tokens it may
generate, capped at the model's context) and reserves that worst case in the process's
KV budget (kv_budget.py) at once, so a running sequence can never run out of KV memory.
Memory is allocated only as positions are written: ``ensure(n)`` grows the arrays in
blocks of BLOCK positions (and by half again at least, so the copies stay a small share),
so a ``max_tokens: 10**9`` request costs the memory of the tokens it really produces.

float16 is llama.cpp's default KV type: half the memory and half the bytes attention
reads per token of context; the kernels store with round-to-nearest and compute in f32
(kernels/kv.py). ``kv_dtype="float32"`` keeps exact f32 keys and values. A device
(CUDA) cache is f32 and allocated whole: its kernels take no other layout.
"""

from __future__ import annotations

import weakref

import numpy as np

from ...errors import InputError
from ..checkpoint.config import ModelConfig
from .kv_budget import KV_BUDGET, KVBudget

BLOCK = 256  # positions added at least when a cache grows
KV_DTYPES = {"float16": np.uint16, "float32": np.float32}  # name -> storage dtype (f16 as its bits)


class KVCache:
    """Keys and values of every layer for up to ``capacity`` positions; ``pos`` of them are filled."""

    def __init__(self, config: ModelConfig, capacity: int, kv_dtype: str = "float16", device_zeros=None,
                 budget: KVBudget = KV_BUDGET, wait: bool = False):
        limit = max_context(config)
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or not 1 <= capacity <= limit:
            raise InputError(f"cache size must be an integer in 1..{limit} (the model's context), got {capacity!r}")
        check_kv_dtype(kv_dtype)
        self.capacity = int(capacity)
        self.pos = 0
        self._shape = (config.num_hidden_layers, config.num_key_value_heads, config.head_dim)
        dtype = np.float32 if device_zeros is not None else KV_DTYPES[kv_dtype]
        self.bytes_per_position = bytes_per_position(config, dtype)
        self.reserved = self.capacity * self.bytes_per_position
        budget.reserve(self.reserved, f"a sequence of {self.capacity} positions", wait=wait)
        self._release = weakref.finalize(self, budget.release, self.reserved)  # once: close() or garbage
        L, KV, D = self._shape
        if device_zeros is not None:  # the device's kernels need the whole cache at once
            self.k, self.v = device_zeros((L, KV, self.capacity, D)), device_zeros((L, KV, self.capacity, D))
        else:
            self.k, self.v = np.empty((L, KV, 0, D), dtype), np.empty((L, KV, 0, D), dtype)

    @property
    def free(self) -> int:
        """Positions still free."""
        return self.capacity - self.pos

    @property
    def allocated(self) -> int:
        """Positions the arrays hold now (grows towards capacity)."""
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of KV memory allocated now."""
        return self.allocated * self.bytes_per_position

    def ensure(self, n_positions: int) -> None:
        """Make room for positions 0..n_positions-1, copying the filled part into larger arrays if needed."""
        if n_positions <= self.allocated:
            return
        if n_positions > self.capacity:
            raise InputError(f"{n_positions} positions do not fit in the KV cache of {self.capacity}")
        grown = max(-(-n_positions // BLOCK) * BLOCK, self.allocated + self.allocated // 2)
        grown = min(grown, self.capacity)
        L, KV, D = self._shape
        for name in ("k", "v"):
            old = getattr(self, name)
            new = np.empty((L, KV, grown, D), old.dtype)
            new[:, :, : self.pos] = old[:, :, : self.pos]
            setattr(self, name, new)

    def close(self) -> None:
        """Free the memory and give the reservation back now (the cache is unusable afterwards)."""
        L, KV, D = self._shape
        self.k = self.v = np.empty((L, KV, 0, D), self.k.dtype)
        self.capacity = self.pos = 0
        self._release()


def bytes_per_position(config: ModelConfig, dtype) -> int:
    """KV bytes one position of a sequence takes: keys and values of every layer and KV head."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * np.dtype(dtype).itemsize


def check_kv_dtype(kv_dtype) -> None:
    """Refuse a KV dtype name the kernels do not take."""
    if kv_dtype not in KV_DTYPES:
        raise InputError(f"kv_dtype: got {kv_dtype!r}; allowed: {', '.join(KV_DTYPES)}")


def max_context(config: ModelConfig) -> int:
    """The longest sequence the model supports: its trained context, extended by dynamic RoPE."""
    if config.rope.type == "dynamic":
        return int(config.max_position_embeddings * config.rope.factor)
    return config.max_position_embeddings
