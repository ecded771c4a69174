"""The fast single-token step on the CPU: gpt-fast's ``decode_one_token``.

``Model.forward`` (forward.py) is the readable reference. For one token on the CPU
the model calls ``decode_one_token`` instead, which runs kernels/decode.py's
``decode_step``: all layers in one compiled call, over the per-projection stacked
(n_layers, ...) arrays that weights.py already holds. This module builds what that
call reads, by name (the NamedTuples of kernels/decode.py): the weights as
``Layers`` of ``AwqStack``/``DenseStack``, the lm_head, and a ``Scratch`` of every
intermediate, made once here (no allocation per token but the returned logits).
tests/test_decode.py checks the two paths agree.
"""

from __future__ import annotations

import numpy as np

from ...kernels.decode import ATTN_CHUNK, RESCORE, AwqStack, DenseHead, DenseStack, Int8Head, Layers, Scratch, \
    decode_step
from ...kernels.qdot import ACT_BLOCK, to_kernel_order
from ..checkpoint.config import ModelConfig
from .cache import KVCache
from .linear import AwqLinear, DenseLinear, HalfLinear, Linear, quantize_int8
from .rope import cos_sin
from .weights import ModelWeights


HEAD_SLAB = 1024  # lm_head rows quantized at a time when the int8 screen is built (16 MB of f32 at 4096 wide)


class DecodeState:
    """What ``decode_step`` reads besides the cache: stacked weights by name, and scratch buffers."""

    def __init__(self, config: ModelConfig, layers: Layers, norms: np.ndarray, final_norm: np.ndarray,
                 head: DenseHead | Int8Head, embed, lm_head_int8: bool):
        c = self.config = config
        self.layers = layers
        self.norms = norms  # (L, 2, H) f32
        self.final_norm = final_norm  # (H,) f32
        self.head = head
        self.lm_head_int8 = lm_head_int8  # as asked: a hidden size not a multiple of 64 keeps the DenseHead
        self.embed = embed  # Embedding: ids -> (T, H) f32
        self.x = np.zeros(c.hidden_size, np.float32)  # the residual stream
        self.logits = np.zeros(c.vocab_size, np.float32)
        self.capacity = 0  # cache positions the scratch's attention buffers cover
        self.scratch = self._scratch(0)

    @classmethod
    def build(cls, config: ModelConfig, weights: ModelWeights, lm_head_int8: bool = True) -> "DecodeState | None":
        """The state for ``weights``, or None when they are not in a layout decode_step takes.

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

    def _scratch(self, capacity: int) -> Scratch:
        """Every intermediate of a step, the attention's sized for ``capacity`` cache positions."""
        c = self.config
        H, I, heads = c.hidden_size, c.intermediate_size, c.num_attention_heads
        k_max = max(H, c.q_size, I)
        chunks = (capacity + ATTN_CHUNK - 1) // ATTN_CHUNK
        f32 = lambda *shape: np.zeros(shape, np.float32)
        return Scratch(h=f32(H), qkv=f32(c.q_size + 2 * c.kv_size), attn=f32(c.q_size), mlp=f32(2 * I), act=f32(I),
                       proj=f32(H), xq=np.zeros(2 * k_max, np.int8), xscale=f32(k_max // ACT_BLOCK),
                       xbsum=f32(2 * k_max // ACT_BLOCK), scores=f32(heads, capacity),
                       o_part=f32(heads, chunks, c.head_dim), m_part=f32(heads, chunks), l_part=f32(heads, chunks))

    def scratch_for(self, capacity: int) -> Scratch:
        """The scratch, regrown when a cache of ``capacity`` positions outgrows its attention buffers."""
        if capacity > self.capacity:
            self.scratch = self._scratch(capacity)
            self.capacity = capacity
        return self.scratch


def decode_one_token(state: DecodeState, token: int, cache: KVCache) -> np.ndarray:
    """Logits (1, V) f32 for ``token`` at position cache.pos, advancing the cache by one.

    The caller (Model.forward) has validated the token and the cache. The scratch buffers are
    the state's own: one sequence at a time per model (no two threads in forward at once).
    """
    c = state.config
    pos = cache.pos
    cos, sin = cos_sin(c.rope, c.head_dim, c.max_position_embeddings, pos, 1)
    state.x[:] = state.embed(np.array([token]))[0]
    decode_step(state.x, state.layers, state.norms, state.final_norm, state.head, cache.k, cache.v, pos,
                cos[0], sin[0], np.float32(c.rms_norm_eps), c.num_attention_heads, state.scratch_for(cache.capacity),
                state.logits)
    cache.pos += 1
    return state.logits[None, :].copy()


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
    """A stacked Linear (arrays (L, ...)) -> decode_step's named stack, or None for a format it lacks.

    AWQ needs K a multiple of 64 and groups of 32 or a multiple of 64 inputs: the int8 activations'
    blocks of 64 (kernels/qdot.py) hold two whole groups or lie inside one.
    """
    if type(linear) is AwqLinear:
        n_groups, n_words = linear.scales.shape[-1], linear.qweight.shape[-1]
        n_blocks = n_words // 8
        if n_words % 8 or not (n_groups == 2 * n_blocks or n_blocks % n_groups == 0):
            return None
        arrays = (linear.qweight, linear.scales, linear.szeros)
        kind = AwqStack
    elif type(linear) is DenseLinear:
        arrays = (linear.weight,)
        kind = DenseStack
    else:  # int8 projections go through the readable path
        return None
    L, N = arrays[0].shape[:2]
    bias = linear.bias if linear.bias is not None else np.zeros((L, N), np.float32)
    return kind(*arrays, bias)
