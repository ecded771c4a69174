"""The forward pass of a Llama / Qwen2 decoder, top to bottom, on Numba kernels.

    ids -> embed -> L x [ RMSNorm -> qkv (+bias) -> RoPE -> cache -> attention -> o_proj -> +residual
                          RMSNorm -> gate_up -> silu(gate) * up -> down_proj -> +residual ]
        -> RMSNorm -> lm_head -> logits

A prompt goes through in one call (matrix kernels); each generated token then
goes through alone (vector kernels). Both write their keys and values into the
same KVCache, whose fill level is the position of the next token.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..checkpoint.config import ModelConfig
from ..checkpoint.safetensors import Checkpoint
from .backend import CPU, Backend
from .cache import KVCache
from .device import get_backend
from .fast_decode import DecodeState, decode_one_token
from .rope import cos_sin
from .threads import resolve_threads, use_threads
from .weights import LayerWeights, ModelWeights, load_weights


class Model:
    """A loaded model: its config, its weights (on the backend's device), and ``forward``."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, backend: Backend = CPU, threads: int | None = None):
        self.config = config
        self.backend = backend
        self.weights = backend.upload(weights)
        self.threads = resolve_threads(threads)  # CPU threads of the parallel kernels (threads.py)
        self.fast = True  # single CPU tokens through decode_one_token; False: always the readable forward
        self.fast_lm_head_int8 = False  # True: decode_one_token screens logits with an int8 lm_head copy
        self._decode_state = None  # built on first use; False when the weights do not allow it
        self._decode_lock = threading.Lock()
        self._kv_bytes = 0  # bytes of this model's live KV caches (new_cache adds, garbage collection subtracts)
        self._kv_lock = threading.RLock()  # re-entrant: a collection may run a release inside the lock

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", int8: bool = False, threads: int | None = None) -> "Model":
        """Load config.json and the safetensors weights of a checkpoint directory.

        ``int8``: quantize float projections to int8 weight-only as they are read.
        ``threads``: CPU threads for the kernels (default: the cores this process may use).
        """
        backend = get_backend(device)
        threads = resolve_threads(threads)  # a bad value is an error before any file is read
        config = ModelConfig.load(directory)
        return cls(config, load_weights(Checkpoint(directory), config, int8=int8), backend, threads)

    def new_cache(self, max_tokens: int) -> KVCache:
        """An empty KV cache for one sequence of up to ``max_tokens`` positions."""
        cache = KVCache(self.config, max_tokens, self.backend.zeros)
        self._count_kv(cache.nbytes)
        weakref.finalize(cache, self._count_kv, -cache.nbytes)  # when the cache is freed
        return cache

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes held by this model's KV caches that are still alive (a server's metrics report it)."""
        return self._kv_bytes

    def _count_kv(self, delta: int) -> None:
        with self._kv_lock:
            self._kv_bytes += delta

    def forward(self, ids, cache: KVCache, last_only: bool = False, fast: bool | None = None) -> np.ndarray:
        """Run ``ids`` (positions cache.pos..) through the model; return f32 logits (len(ids), vocab).

        With ``last_only`` only the last position's logits are computed (1, vocab):
        what generation needs, without a prompt-sized lm_head matmul. A single token
        on the CPU goes through the compiled ``decode_one_token`` (fast_decode.py)
        unless ``fast`` (default: ``self.fast``) is False; the code below is the reference.
        """
        ids = self._check(ids, cache)
        use_threads(self.threads)
        if len(ids) == 1 and (self.fast if fast is None else fast) and self._fast_state():
            with self._decode_lock:  # its scratch buffers serve one call at a time
                return decode_one_token(self._decode_state, int(ids[0]), cache)
        c, w, ops = self.config, self.weights, self.backend
        start = cache.pos
        cos, sin = (ops.to_device(a) for a in cos_sin(c.rope, c.head_dim, c.max_position_embeddings, start, len(ids)))
        x = ops.to_device(w.embed(ids))  # (T, H), the residual stream
        for l, layer in enumerate(w.layers):
            decoder_layer(ops, c, layer, x, cache.k[l], cache.v[l], start, cos, sin)
        cache.pos += len(ids)
        if last_only:
            x = x[-1:]
        h = ops.empty(x.shape)
        ops.rmsnorm(x, w.norm, c.rms_norm_eps, h)
        return ops.to_host(w.lm_head(h))

    def _fast_state(self) -> bool:
        """Whether decode_one_token can run this model (CPU, stackable AWQ/dense weights)."""
        state = self._decode_state
        if state is None or (state and state.lm_head_int8 != self.fast_lm_head_int8):
            ok = self.backend is CPU and DecodeState.build(self.config, self.weights, self.fast_lm_head_int8)
            self._decode_state = ok or False
        return self._decode_state is not False

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


def decoder_layer(ops: Backend, c: ModelConfig, layer: LayerWeights, x, k_cache, v_cache, start: int,
                  cos, sin, observe=None) -> None:
    """One decoder layer, updating the residual stream x (T, H) in place.

    k_cache, v_cache (KV, S, D): this layer's cache; the new tokens sit at start..start+T-1.
    ``observe(name, input)``, if given, sees the input of each linear ('qkv', 'o_proj',
    'gate_up', 'down_proj') before it is applied: the quantizer calibrates on these.
    """
    T = x.shape[0]
    h = ops.empty(x.shape)
    # attention block
    ops.rmsnorm(x, layer.input_norm, c.rms_norm_eps, h)
    if observe:
        observe("qkv", h)
    qkv = layer.qkv(h)  # (T, (n_heads + 2 n_kv) D): q heads, then k heads, then v heads
    ops.apply_rope(qkv, cos, sin, c.num_attention_heads + c.num_key_value_heads, c.head_dim)
    ops.store_kv(qkv, k_cache, v_cache, start, c.num_attention_heads)
    attn = ops.empty((T, c.q_size))
    ops.attention(qkv, k_cache, v_cache, start, c.num_attention_heads, attn)
    if observe:
        observe("o_proj", attn)
    ops.add_(x, layer.o_proj(attn))
    # MLP block
    ops.rmsnorm(x, layer.post_norm, c.rms_norm_eps, h)
    if observe:
        observe("gate_up", h)
    gate = ops.empty((T, c.intermediate_size))
    ops.silu_mul(layer.gate_up(h), gate)
    if observe:
        observe("down_proj", gate)
    ops.add_(x, layer.down_proj(gate))
