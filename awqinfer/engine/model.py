"""The forward pass of a Llama / Qwen2 decoder, top to bottom, on Numba kernels.

    ids -> embed -> L x [ RMSNorm -> qkv (+bias) -> RoPE -> cache -> attention -> o_proj -> +residual
                          RMSNorm -> gate_up -> silu(gate) * up -> down_proj -> +residual ]
        -> RMSNorm -> lm_head -> logits

A prompt goes through in one call (matrix kernels); each generated token then
goes through alone (vector kernels). Both write their keys and values into the
same KVCache, whose fill level is the position of the next token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..kernels.activations import silu_mul
from ..kernels.attention import attention
from ..kernels.norm import rmsnorm
from ..kernels.rope import apply_rope
from .cache import KVCache
from .checkpoint import Checkpoint
from .config import ModelConfig
from .rope import cos_sin
from .weights import ModelWeights, load_weights


class Model:
    """A loaded model: its config, its weights, and ``forward``."""

    def __init__(self, config: ModelConfig, weights: ModelWeights):
        self.config = config
        self.weights = weights

    @classmethod
    def load(cls, directory: str | Path) -> "Model":
        """Load config.json and the safetensors weights of a checkpoint directory."""
        config = ModelConfig.load(directory)
        return cls(config, load_weights(Checkpoint(directory), config))

    def new_cache(self, max_tokens: int) -> KVCache:
        """An empty KV cache for one sequence of up to ``max_tokens`` positions."""
        return KVCache(self.config, max_tokens)

    def forward(self, ids, cache: KVCache, last_only: bool = False) -> np.ndarray:
        """Run ``ids`` (positions cache.pos..) through the model; return f32 logits (len(ids), vocab).

        With ``last_only`` only the last position's logits are computed (1, vocab):
        what generation needs, without a prompt-sized lm_head matmul.
        """
        ids = self._check(ids, cache)
        c, w = self.config, self.weights
        T, start = len(ids), cache.pos
        n_heads, n_kv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        cos, sin = cos_sin(c.rope, D, c.max_position_embeddings, start, T)

        x = w.embed(ids)  # (T, H)
        h = np.empty_like(x)
        attn = np.empty((T, n_heads, D), np.float32)
        gate = np.empty((T, c.intermediate_size), np.float32)
        for l, layer in enumerate(w.layers):
            # attention block
            rmsnorm(x, layer.input_norm, c.rms_norm_eps, h)
            qkv = layer.qkv(h)  # (T, (n_heads + 2 n_kv) D)
            q = qkv[:, : n_heads * D].reshape(T, n_heads, D)
            k = qkv[:, n_heads * D : (n_heads + n_kv) * D].reshape(T, n_kv, D)
            v = qkv[:, (n_heads + n_kv) * D :].reshape(T, n_kv, D)
            apply_rope(q, cos, sin)
            apply_rope(k, cos, sin)
            cache.k[l, :, start : start + T] = k.transpose(1, 0, 2)
            cache.v[l, :, start : start + T] = v.transpose(1, 0, 2)
            attention(q, cache.k[l], cache.v[l], start, attn)
            x += layer.o_proj(attn.reshape(T, n_heads * D))
            # MLP block
            rmsnorm(x, layer.post_norm, c.rms_norm_eps, h)
            silu_mul(layer.gate_up(h), gate)
            x += layer.down_proj(gate)
        cache.pos += T

        if last_only:
            x = x[-1:]
        rmsnorm(x, w.norm, c.rms_norm_eps, x)
        return w.lm_head(x)

    def _check(self, ids, cache: KVCache) -> np.ndarray:
        """Validate ids and cache before any kernel runs (Numba does not check bounds)."""
        c = self.config
        if not isinstance(cache, KVCache) or cache.k.shape[0] != c.num_hidden_layers or \
                cache.k.shape[1:2] + cache.k.shape[3:] != (c.num_key_value_heads, c.head_dim):
            raise InputError("cache must be a KVCache made by this model's new_cache()")
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == object):
            raise InputError(f"ids must be a non-empty 1-D sequence of integers, got {_describe(ids)}")
        if arr.dtype == object and not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in arr):
            raise InputError("ids must be a non-empty 1-D sequence of integers")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= c.vocab_size)
        if bad.any():
            raise InputError(f"token id {int(arr[bad][0])} is outside the vocabulary 0..{c.vocab_size - 1}")
        if len(arr) > cache.free:
            raise InputError(
                f"{len(arr)} tokens do not fit in the KV cache: {cache.pos} of {cache.capacity} positions are used"
            )
        return arr


def _describe(value) -> str:
    arr = np.asarray(value)
    return f"{type(value).__name__} of shape {arr.shape} and dtype {arr.dtype}"
