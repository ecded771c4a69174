"""The forward pass of a Llama / Qwen2 decoder, top to bottom, on Numba kernels.

    ids -> embed -> L x [ RMSNorm -> qkv (+bias) -> RoPE -> cache -> attention -> o_proj -> +residual
                          RMSNorm -> gate_up -> silu(gate) * up -> down_proj -> +residual ]
        -> RMSNorm -> lm_head -> logits

A prompt goes through in one call (matrix kernels); each generated token then
goes through alone (vector kernels), or together with the new tokens of other
sequences (``forward_batch``: one row per sequence, each with its own KVCache, whose
fill level is the position of its next token). ``decoder_layer`` serves both: the rows
of x come in segments, each belonging to one sequence's cache. Each sequence may name a
LoRA adapter (``adapters``, adapters.py): its rows get that adapter's deltas, the others none.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..checkpoint.config import ModelConfig
from ..checkpoint.safetensors import Checkpoint
from .adapters import Adapters, add_lora, row_groups
from .backend import CPU, Backend
from .cache import KV_DTYPES, KVCache, bytes_per_position, check_kv_dtype
from .device import get_backend
from .fast_decode import DecodeState, decode_tokens
from .rope import cos_sin, cos_sin_at
from .threads import ThreadChooser, resolve_threads, use_threads
from .weights import LayerWeights, ModelWeights, load_weights

LINEAR_INPUTS = ("qkv", "o_proj", "gate_up", "down_proj")  # decoder_layer's observations that feed a linear


class Model:
    """A loaded model: its config, its weights (on the backend's device), and ``forward``."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, backend: Backend = CPU, threads: int | None = None,
                 kv_dtype: str = "float16"):
        self.config = config
        self.backend = backend
        self.weights = backend.upload(weights)
        self.threads = resolve_threads(threads)  # CPU threads of the parallel kernels: at most this many
        self.thread_chooser = ThreadChooser(self.threads) if threads is None else None  # None: always self.threads
        self.kv_dtype = kv_dtype  # how caches store keys and values (cache.py): "float16" or "float32"
        self.fast = True  # single CPU tokens through decode_tokens; False: always the readable forward
        self.fast_lm_head_int8 = True  # decode_tokens screens logits with an int8 lm_head (False: every logit exact)
        self._decode_state = None  # built on first use; False when the weights do not allow it
        self._decode_lock = threading.Lock()
        self.adapters = Adapters(config)  # LoRA adapters by name (add_adapter), chosen per sequence

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", int8: bool = False, threads: int | None = None,
             kv_dtype: str = "float16") -> "Model":
        """Load config.json and the safetensors weights of a checkpoint directory.

        ``int8``: quantize float projections to int8 weight-only as they are read.
        ``threads``: CPU threads for the kernels (default: the cores this process may use).
        ``kv_dtype``: "float16" (default, half the KV memory) or "float32" keys and values.
        """
        backend = get_backend(device)
        resolve_threads(threads)  # bad values are errors before any file is read
        check_kv_dtype(kv_dtype)
        config = ModelConfig.load(directory)
        return cls(config, load_weights(Checkpoint(directory), config, int8=int8), backend, threads, kv_dtype)

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load the PEFT LoRA adapter in directory ``path`` under ``name`` (lora.py checks it against this model)."""
        self.add_adapters({name: path})

    def add_adapters(self, named: dict) -> None:
        """Load several adapters ``{name: path}``: all of them, or none if one fails."""
        if self.backend is not CPU:
            raise InputError(f"LoRA adapters run on the CPU; this model is on {self.backend.name}")
        self.adapters.add(named)

    @property
    def kv_bytes_per_position(self) -> int:
        """KV memory one position of a sequence takes in this model's caches."""
        return bytes_per_position(self.config, KV_DTYPES[self.kv_dtype] if self.backend is CPU else np.float32)

    def new_cache(self, max_tokens: int, wait: bool = False) -> KVCache:
        """An empty KV cache for one sequence of up to ``max_tokens`` positions.

        It reserves its worst case in the process's KV budget (kv_budget.py): with ``wait``
        it waits for room, else a full budget is an InputError. Memory grows as it fills.
        """
        device_zeros = None if self.backend is CPU else self.backend.zeros
        return KVCache(self.config, max_tokens, self.kv_dtype, device_zeros, wait=wait)

    def forward(self, ids, cache: KVCache, last_only: bool = False, fast: bool | None = None,
                observe=None, adapter: str | None = None) -> np.ndarray:
        """Run ``ids`` (positions cache.pos..) through the model; return f32 logits (len(ids), vocab).

        With ``last_only`` only the last position's logits are computed (1, vocab):
        what generation needs, without a prompt-sized lm_head matmul. A single token
        on the CPU goes through the compiled step (fast_decode.py) unless ``fast``
        (default: ``self.fast``) is False; the code below is the reference.
        ``observe(l, name, value)``, if given, sees what ``decoder_layer`` shows of each
        layer ``l`` (engine/trace.py records it), then ``(None, "lm_head", logits)``: the
        readable code below runs, observed. A single token that the compiled step would take
        then goes through it too, over the same position (``(None, "compiled_step", logits)``):
        its logits are returned and its keys and values stay in the cache, so an observed
        generation samples exactly what an unobserved one does. ``adapter``: the name of a
        loaded LoRA adapter to apply (None: the base model).
        """
        ids = self._check(ids, cache)
        if len(ids) == 1 and observe is None:
            return self.forward_batch(ids, [cache], fast, [adapter])
        rows = self.adapters.rows([adapter], 1)
        use_threads(self.thread_chooser.best if self.thread_chooser else self.threads)
        cache.ensure(cache.pos + len(ids))
        x = self._layers(ids, [(cache, cache.pos, slice(None))], cos_sin(*self._rope, cache.pos, len(ids)), rows,
                         observe)
        cache.pos += len(ids)
        logits = self._logits(x[-1:] if last_only else x)
        if observe is None:
            return logits
        observe(None, "lm_head", logits)
        if len(ids) == 1 and (self.fast if fast is None else fast) and self._fast_state():
            cache.pos -= 1
            logits = self.forward_batch(ids, [cache], fast, [adapter])
            observe(None, "compiled_step", logits)
        return logits

    def forward_batch(self, tokens, caches: list[KVCache], fast: bool | None = None,
                      adapters: list[str | None] | None = None) -> np.ndarray:
        """One new token for each of B sequences: token b at position caches[b].pos. Logits (B, vocab) f32.

        Decode on a CPU is bound by reading the weights, so the sequences share one read of
        them; each attends over its own cache. On the CPU this is one compiled call
        (fast_decode.py) unless ``fast`` (default: ``self.fast``) is False. ``adapters``: each
        sequence's LoRA adapter name, or None for none (None: no sequence has one).
        """
        tokens = self._check_batch(tokens, caches)
        rows = self.adapters.rows(adapters, len(caches))
        for cache in caches:
            cache.ensure(cache.pos + 1)
        if (self.fast if fast is None else fast) and self._fast_state():
            with self._decode_lock:  # its scratch buffers serve one call at a time
                return self._decode_timed(tokens, caches, rows)
        use_threads(self.thread_chooser.best if self.thread_chooser else self.threads)
        cos, sin = cos_sin_at(*self._rope, [cache.pos for cache in caches])  # (B, D/2)
        x = self._layers(tokens, [(cache, cache.pos, slice(b, b + 1)) for b, cache in enumerate(caches)], (cos, sin),
                         rows)
        for cache in caches:
            cache.pos += 1
        return self._logits(x)

    def forget_caches(self) -> None:
        """Let go of the compiled step's references to the last batch's caches (a scheduler retiring them)."""
        if self._decode_state:
            with self._decode_lock:
                self._decode_state.forget_caches()

    @property
    def _rope(self) -> tuple:
        c = self.config
        return c.rope, c.head_dim, c.max_position_embeddings

    def _layers(self, ids: np.ndarray, segments: list, angles: tuple, adapter_rows: np.ndarray,
                observe=None) -> np.ndarray:
        """The residual stream (T, H) of ``ids`` after every decoder layer; segments: (cache, start, rows).

        adapter_rows: each segment's LoRA adapter index (adapters.py), -1 for none.
        ``observe(l, name, value)``: decoder_layer's observations, with the layer's index.
        """
        c, w, ops = self.config, self.weights, self.backend
        cos, sin = (ops.to_device(a) for a in angles)
        x = ops.to_device(w.embed(ids))  # (T, H), the residual stream
        groups, stacks = row_groups(adapter_rows, segments), self.adapters.stacks
        for l, layer in enumerate(w.layers):
            lora = (lambda name, inp, out, l=l: add_lora(getattr(stacks, name), l, groups, inp, out)) if groups else None
            decoder_layer(ops, c, layer, x, [(cache.k[l], cache.v[l], start, rows) for cache, start, rows in segments],
                          cos, sin, None if observe is None else partial(observe, l), lora)
        return x

    def _logits(self, x) -> np.ndarray:
        """Final RMSNorm and lm_head of the residual rows x (T, H): logits (T, vocab) f32 on the host."""
        c, w, ops = self.config, self.weights, self.backend
        h = ops.empty(x.shape)
        ops.rmsnorm(x, w.norm, c.rms_norm_eps, h)
        return ops.to_host(w.lm_head(h))

    def _decode_timed(self, tokens: np.ndarray, caches: list[KVCache], rows: np.ndarray) -> np.ndarray:
        """The compiled step with the thread count the chooser asks for (or the fixed one), its time reported back."""
        chooser = self.thread_chooser
        lora = self.adapters.stacks
        if chooser is None:
            use_threads(self.threads)
            return decode_tokens(self._decode_state, tokens, caches, lora, rows)
        threads = chooser.next(len(tokens))
        use_threads(threads)
        start = time.perf_counter()
        logits = decode_tokens(self._decode_state, tokens, caches, lora, rows)
        chooser.record(threads, time.perf_counter() - start)
        return logits

    def _fast_state(self) -> bool:
        """Whether decode_tokens can run this model (CPU, stackable AWQ/dense weights)."""
        state = self._decode_state
        if state is None or (state and state.lm_head_int8 != self.fast_lm_head_int8):
            ok = self.backend is CPU and DecodeState.build(self.config, self.weights, self.fast_lm_head_int8)
            self._decode_state = ok or False
        return self._decode_state is not False

    def _check_cache(self, cache) -> None:
        c = self.config
        if not isinstance(cache, KVCache) or cache.k.shape[0] != c.num_hidden_layers or \
                cache.k.shape[1:2] + cache.k.shape[3:] != (c.num_key_value_heads, c.head_dim) or \
                (self.backend is CPU and cache.k.dtype != KV_DTYPES[self.kv_dtype]):
            raise InputError("cache must be a KVCache made by this model's new_cache()")

    def _check_batch(self, tokens, caches) -> np.ndarray:
        """Validate a batch (one token per cache, distinct caches, each with room) before any kernel runs."""
        if not isinstance(caches, (list, tuple)) or not caches:
            raise InputError("caches must be a non-empty list of KVCaches, one per token")
        ids = np.asarray(tokens)
        if ids.shape != (len(caches),):
            raise InputError(f"tokens must be one id per cache: got shape {ids.shape} for {len(caches)} caches")
        if len({id(cache) for cache in caches}) != len(caches):
            raise InputError("each sequence of a batch needs its own KVCache (a cache appears twice)")
        for cache in caches:
            self._check_cache(cache)
        arr = self._check_ids(ids)
        for cache in caches:
            self._check_room(cache, 1)
        return arr

    def _check(self, ids, cache: KVCache) -> np.ndarray:
        """Validate ids and cache before any kernel runs (Numba does not check bounds)."""
        self._check_cache(cache)
        arr = self._check_ids(ids)
        self._check_room(cache, len(arr))
        return arr

    @staticmethod
    def _check_room(cache: KVCache, n: int) -> None:
        if n > cache.free:
            raise InputError(
                f"{n} tokens do not fit in the KV cache: {cache.pos} of {cache.capacity} positions are used"
            )

    def _check_ids(self, ids) -> np.ndarray:
        """ids as int64 (T,), each in the vocabulary; else an InputError naming the problem."""
        c = self.config
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == object):
            raise InputError(f"ids must be a non-empty 1-D sequence of integers, got {_describe(ids)}")
        if arr.dtype == object and not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in arr):
            raise InputError("ids must be a non-empty 1-D sequence of integers")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= c.vocab_size)
        if bad.any():
            raise InputError(f"token id {int(arr[bad][0])} is outside the vocabulary 0..{c.vocab_size - 1}")
        return arr


def _describe(value) -> str:
    arr = np.asarray(value)
    return f"{type(value).__name__} of shape {arr.shape} and dtype {arr.dtype}"


def decoder_layer(ops: Backend, c: ModelConfig, layer: LayerWeights, x, segments: list, cos, sin,
                  observe=None, lora=None) -> None:
    """One decoder layer, updating the residual stream x (T, H) in place.

    segments: which rows of x belong to which sequence, as (k_cache, v_cache, start, rows):
    that sequence's cache of this layer (KV, S, D), where its rows' positions start, and
    the slice of rows. A prompt is one segment of T rows; a decode batch, B segments of one
    row. cos, sin (T, D/2): each row's rotary angles.

    ``observe(name, value)``, if given, is called at each point of the layer, in this order:
    'residual_in' (x entering), 'qkv' (the input of that linear), 'qkv_rotated' (q and k
    rotated, v; the caches now hold every row's k and v), 'o_proj' (its input, the
    attention's output), 'residual_mid' (x after the attention block), 'gate_up',
    'down_proj' (their inputs), 'residual_out' (x leaving). The quantizer calibrates on
    the LINEAR_INPUTS; engine/trace.py reports them all. Values are live arrays: copy
    what you keep. ``lora(name, input, output)``, if given, adds the LoRA deltas of the
    rows that carry an adapter to each projection's output.
    """
    T = x.shape[0]
    h = ops.empty(x.shape)
    if observe:
        observe("residual_in", x)
    # attention block
    ops.rmsnorm(x, layer.input_norm, c.rms_norm_eps, h)
    if observe:
        observe("qkv", h)
    qkv = layer.qkv(h)  # (T, (n_heads + 2 n_kv) D): q heads, then k heads, then v heads
    if lora:
        lora("qkv", h, qkv)
    ops.apply_rope(qkv, cos, sin, c.num_attention_heads + c.num_key_value_heads, c.head_dim)
    attn = ops.empty((T, c.q_size))
    for k_cache, v_cache, start, rows in segments:  # each sequence writes and reads its own cache
        ops.store_kv(qkv[rows], k_cache, v_cache, start, c.num_attention_heads)
        ops.attention(qkv[rows], k_cache, v_cache, start, c.num_attention_heads, attn[rows])
    if observe:
        observe("qkv_rotated", qkv)
        observe("o_proj", attn)
    out = layer.o_proj(attn)
    if lora:
        lora("o_proj", attn, out)
    ops.add_(x, out)
    if observe:
        observe("residual_mid", x)
    # MLP block
    ops.rmsnorm(x, layer.post_norm, c.rms_norm_eps, h)
    if observe:
        observe("gate_up", h)
    gate = ops.empty((T, c.intermediate_size))
    gate_up = layer.gate_up(h)
    if lora:
        lora("gate_up", h, gate_up)
    ops.silu_mul(gate_up, gate)
    if observe:
        observe("down_proj", gate)
    out = layer.down_proj(gate)
    if lora:
        lora("down_proj", gate, out)
    ops.add_(x, out)
    if observe:
        observe("residual_out", x)
