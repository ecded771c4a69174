"""The fast decode step on the CPU: one new token for each of B sequences in one compiled call.

``Model.forward`` and ``Model.forward_batch`` (forward.py) are the readable reference.
For single tokens on the CPU the model calls ``decode_tokens`` instead, which runs
kernels/decode.py's ``decode_batch``: all layers in one compiled call, over the
per-projection stacked (n_layers, ...) arrays that weights.py already holds. This
module builds what that call reads, by name (the NamedTuples of kernels/decode.py):
the weights as ``Layers`` of ``AwqStack``/``DenseStack``, the lm_head, and a
``Scratch`` of every intermediate for B rows, kept between steps (no allocation per
token but the returned logits). tests/test_decode.py checks the two paths agree.
"""

from __future__ import annotations

import numpy as np

from numba.typed import List

from ...kernels.decode import RESCORE, AwqStack, DenseHead, DenseStack, Int8Head, Layers, Scratch, decode_batch
from ...kernels.decode_attention import n_chunks
from ...kernels.lora import LoraLayers
from ...kernels.qdot import ACT_BLOCK, to_kernel_order
from ..checkpoint.config import ModelConfig
from .cache import KVCache
from .linear import AwqLinear, DenseLinear, HalfLinear, Linear, quantize_int8
from .rope import cos_sin_at
from .weights import ModelWeights

HEAD_SLAB = 1024  # lm_head rows quantized at a time when the int8 screen is built (16 MB of f32 at 4096 wide)


class DecodeState:
    """What ``decode_batch`` reads besides the caches: stacked weights by name, and scratch buffers."""

    def __init__(self, config: ModelConfig, layers: Layers, norms: np.ndarray, final_norm: np.ndarray,
                 head: DenseHead | Int8Head, embed, lm_head_int8: bool):
        self.config = config
        self.layers = layers
        self.norms = norms  # (L, 2, H) f32
        self.final_norm = final_norm  # (H,) f32
        self.head = head
        self.lm_head_int8 = lm_head_int8  # as asked: a hidden size not a multiple of 64 keeps the DenseHead
        self.embed = embed  # Embedding: ids -> (T, H) f32
        self.scratch = self._scratch(1, 1)
        self._lists = ((), None, None)  # (the last batch's k and v arrays, k list, v list)

    @classmethod
    def build(cls, config: ModelConfig, weights: ModelWeights, lm_head_int8: bool = True) -> "DecodeState | None":
        """The state for ``weights``, or None when they are not in a layout decode_batch takes.

        ``lm_head_int8`` (the default): read logits from an int8 copy of the lm_head (one scale
        per vocabulary row; a quarter of the bytes of f32, the largest matrix of a small model)
        with int8 activations, then recompute the top RESCORE logits from the exact rows: the
        argmax and the top logits are the reference's, the others carry the int8 rounding (~1%).
        False: the f32 lm_head, every logit as the readable forward computes it.
        """
        stacks = [_stack(weights.stacks[name]) for name in Layers._fields]
        head = weights.lm_head
        if None in stacks or type(head) not in (DenseLinear, HalfLinear) or head.bias is not None:
            return None
        rows, bf16 = (head.bits, head.bf16) if type(head) is HalfLinear else (head.weight, False)
        if not rows.flags.c_contiguous:
            return None
        if lm_head_int8 and config.hidden_size % ACT_BLOCK == 0:
            head_tuple = _int8_head(head, rows, bf16)
        else:
            head_tuple = DenseHead(rows, bf16)
        return cls(config, Layers(*stacks), weights.norms, weights.norm, head_tuple, weights.embed, lm_head_int8)

    def _scratch(self, rows: int, positions: int) -> Scratch:
        """Every intermediate of a step for ``rows`` sequences, the attention's for ``positions`` cache positions."""
        c = self.config
        H, I, heads = c.hidden_size, c.intermediate_size, c.num_attention_heads
        k_max = max(H, c.q_size, I)
        chunks = n_chunks(positions)
        f32 = lambda *shape: np.zeros(shape, np.float32)
        return Scratch(h=f32(rows, H), qkv=f32(rows, c.q_size + 2 * c.kv_size), attn=f32(rows, c.q_size),
                       mlp=f32(rows, 2 * I), act=f32(rows, I), proj=f32(rows, H),
                       xq=np.zeros(rows * 2 * k_max, np.int8), xscale=f32(rows * k_max // ACT_BLOCK),
                       xsum=np.zeros(rows * k_max // 8, np.int32),
                       scores=f32(rows, heads, positions), o_part=f32(rows, heads, chunks, c.head_dim),
                       m_part=f32(rows, heads, chunks), l_part=f32(rows, heads, chunks))

    def scratch_for(self, rows: int, positions: int) -> Scratch:
        """The scratch for ``rows`` sequences reaching ``positions`` positions, regrown (never shrunk) to fit."""
        s = self.scratch
        if rows > s.h.shape[0] or positions > s.scores.shape[2]:
            self.scratch = self._scratch(max(rows, s.h.shape[0]), max(positions, s.scores.shape[2]))
        s = self.scratch
        if rows == s.h.shape[0]:
            return s
        return Scratch(*(a if a.ndim == 1 else a[:rows] for a in s))  # the flat activation buffers fit any B

    def cache_lists(self, caches: list[KVCache]) -> tuple[List, List]:
        """Typed lists of the caches' k and v arrays for the kernel, rebuilt only when an array changed.

        Building them costs ~0.2 ms, a few percent of a step, so the last ones are kept, keyed by
        the arrays themselves (held, so a new array can never pass for a freed one).
        """
        arrays = tuple(a for cache in caches for a in (cache.k, cache.v))
        last = self._lists[0]
        if len(arrays) != len(last) or any(a is not b for a, b in zip(arrays, last)):
            self._lists = (arrays, List([cache.k for cache in caches]), List([cache.v for cache in caches]))
        return self._lists[1], self._lists[2]

    def forget_caches(self) -> None:
        """Drop the kept lists, so the memory of caches closed since the last step returns now."""
        self._lists = ((), None, None)


def decode_tokens(state: DecodeState, tokens: np.ndarray, caches: list[KVCache], lora: LoraLayers,
                  adapters: np.ndarray) -> np.ndarray:
    """Logits (B, V) f32 for token b at position caches[b].pos, advancing every cache by one.

    The caller (Model) has validated the tokens and the caches, and made room in each cache
    for its new position (``KVCache.ensure``). The scratch buffers are the state's own: one
    step at a time per model. ``lora``: the model's adapter stacks (adapters.py); ``adapters``
    (B,) int64: each row's adapter index into them, -1 for none.
    """
    c = state.config
    n_adapters = lora.qkv.a.shape[0]
    if adapters.dtype != np.int64 or adapters.shape != (len(caches),) or \
            ((adapters < -1) | (adapters >= n_adapters)).any():
        raise ValueError(f"adapter rows {adapters!r} do not index {n_adapters} adapters, one per row")
    positions = np.array([cache.pos for cache in caches], np.int64)
    cos, sin = cos_sin_at(c.rope, c.head_dim, c.max_position_embeddings, positions)  # (B, D/2)
    x = state.embed(np.asarray(tokens))  # (B, H), the residual streams
    scratch = state.scratch_for(len(caches), int(positions.max()) + 1)
    k_list, v_list = state.cache_lists(caches)
    logits = np.empty((len(caches), c.vocab_size), np.float32)
    decode_batch(x, state.layers, state.norms, state.final_norm, state.head, k_list, v_list, positions, cos, sin,
                 np.float32(c.rms_norm_eps), c.num_attention_heads, scratch, lora, adapters, logits)
    for cache in caches:
        cache.pos += 1
    return logits


def _int8_head(head: DenseLinear | HalfLinear, rows: np.ndarray, bf16: bool) -> Int8Head:
    """The Int8Head of an lm_head: int8 rows in kernel order, quantized a slab at a time (no full f32 copy).

    The exact rescoring reads ``rows`` as stored: f32, or the f16/bf16 rows the readable forward widens.
    """
    n = head.out_features
    q8, scales = np.empty((n, head.in_features), np.int8), np.empty(n, np.float32)
    for lo in range(0, n, HEAD_SLAB):
        hi = min(n, lo + HEAD_SLAB)
        q, scales[lo:hi] = quantize_int8(head.rows(lo, hi) if type(head) is HalfLinear else head.weight[lo:hi])
        q8[lo:hi] = to_kernel_order(q)
    return Int8Head(q8, scales, rows, bf16, np.zeros(min(RESCORE, n), np.int64))


def _stack(linear: Linear) -> AwqStack | DenseStack | None:
    """A stacked Linear (arrays (L, ...)) -> decode_batch's named stack, or None for a format it lacks.

    AWQ needs K a multiple of 64 and groups of 32 or a multiple of 64 inputs: the int8 activations'
    blocks of 64 (kernels/qdot.py) hold two whole groups or lie inside one.
    """
    if type(linear) is AwqLinear:
        n_groups, n_words = linear.scales.shape[-1], linear.qweight.shape[-1]
        n_blocks = n_words // 8
        if n_words % 8 or not (n_groups == 2 * n_blocks or n_blocks % n_groups == 0):
            return None
        arrays = (linear.qweight, linear.scales, linear.zeros)
        kind = AwqStack
    elif type(linear) is DenseLinear:
        arrays = (linear.weight,)
        kind = DenseStack
    else:  # int8 projections go through the readable path
        return None
    L, N = arrays[0].shape[:2]
    bias = linear.bias if linear.bias is not None else np.zeros((L, N), np.float32)
    return kind(*arrays, bias)
