"""The fast single-token step on the CPU: gpt-fast's ``decode_one_token``.

``Model.forward`` is the readable reference. For one token on the CPU the
model calls ``decode_one_token`` instead, which runs kernels/decode.py's
``decode_step``: all layers in one compiled call, over the per-projection
stacked (n_layers, ...) arrays that weights.py already holds, with every
intermediate in scratch buffers made once here (no allocation per token but
the returned logits). tests/test_decode.py checks the two paths agree.
"""

from __future__ import annotations

import numpy as np

from ..kernels.awq import GEMV_CHUNKS
from ..kernels.decode import ATTN_CHUNK, RESCORE, decode_step
from ..kernels.int8 import quantize_int8
from .cache import KVCache
from .config import ModelConfig
from .rope import cos_sin
from .weights import AwqLinear, DenseLinear, ModelWeights

PROJECTIONS = ("qkv", "o_proj", "gate_up", "down_proj")


class DecodeState:
    """What ``decode_step`` reads besides the cache: stacked weights, and scratch buffers."""

    def __init__(self, config: ModelConfig, layers: tuple, norms: np.ndarray, final_norm: np.ndarray,
                 lm_head: tuple, embed):
        c = self.config = config
        self.layers = layers  # 4 stacked 5-tuples, see kernels/decode.py
        self.norms = norms  # (L, 2, H) f32
        self.final_norm = final_norm  # (H,) f32
        self.lm_head = lm_head  # (weight (V, H) f32, q8 (V, H) int8 or (0, 0), scales (V,) f32 or (0,))
        self.lm_head_int8 = lm_head[1].size > 0
        self.embed = embed  # Embedding: ids -> (T, H) f32
        H, I = c.hidden_size, c.intermediate_size
        k_max = max(H, c.q_size, I)
        g_max = max(p[1].shape[2] for p in layers)
        f32 = lambda *shape: np.zeros(shape, np.float32)
        self.x = f32(H)
        self.logits = f32(c.vocab_size)
        self.vectors = (f32(H), f32(c.q_size + 2 * c.kv_size), f32(c.q_size), f32(2 * I), f32(I), f32(H),
                        f32(k_max), f32(max(g_max, 1)), f32(GEMV_CHUNKS * (k_max // 8 + 1)),
                        np.zeros(min(RESCORE, c.vocab_size), np.int64))
        self.capacity = 0
        self.attn_scratch = ()

    @classmethod
    def build(cls, config: ModelConfig, weights: ModelWeights, lm_head_int8: bool = False) -> "DecodeState | None":
        """The state for ``weights``, or None when they are not in a layout decode_step takes.

        ``lm_head_int8``: read logits from an int8 copy of the f32 lm_head (one scale per
        vocabulary row, kernels/int8.py), a quarter of the bytes of the largest matrix of a
        small model, then recompute the top RESCORE logits from the f32 rows: the argmax and
        the top logits are the reference's, the others differ by the int8 rounding (~0.5%).
        """
        projections = tuple(_stack_projection(weights.stacks[name]) for name in PROJECTIONS)
        head = weights.lm_head
        if None in projections or type(head) is not DenseLinear or head.bias is not None or \
                not head.weight.flags.c_contiguous:
            return None
        if lm_head_int8:
            head_tuple = (head.weight,) + quantize_int8(head.weight)
        else:
            head_tuple = (head.weight, np.zeros((0, 0), np.int8), np.zeros(0, np.float32))
        return cls(config, projections, weights.norms, weights.norm, head_tuple, weights.embed)

    def attention_scratch(self, capacity: int) -> tuple:
        """Scores and partial softmaxes for a cache of ``capacity`` positions (regrown when needed)."""
        if capacity > self.capacity:
            c = self.config
            n_chunks = (capacity + ATTN_CHUNK - 1) // ATTN_CHUNK
            heads = c.num_attention_heads
            self.attn_scratch = (np.zeros((heads, capacity), np.float32),
                                 np.zeros((heads, n_chunks, c.head_dim), np.float32),
                                 np.zeros((heads, n_chunks), np.float32), np.zeros((heads, n_chunks), np.float32))
            self.capacity = capacity
        return self.attn_scratch


def decode_one_token(state: DecodeState, token: int, cache: KVCache) -> np.ndarray:
    """Logits (1, V) f32 for ``token`` at position cache.pos, advancing the cache by one.

    The caller (Model.forward) has validated the token and the cache. The scratch buffers are
    the state's own: one sequence at a time per model (no two threads in forward at once).
    """
    c = state.config
    pos = cache.pos
    cos, sin = cos_sin(c.rope, c.head_dim, c.max_position_embeddings, pos, 1)
    state.x[:] = state.embed(np.array([token]))[0]
    scratch = state.vectors + state.attention_scratch(cache.capacity)
    decode_step(state.x, state.layers, state.norms, state.final_norm, state.lm_head, cache.k, cache.v, pos,
                cos[0], sin[0], np.float32(c.rms_norm_eps), c.num_attention_heads, scratch, state.logits)
    cache.pos += 1
    return state.logits[None, :].copy()


def _stack_projection(stack) -> tuple | None:
    """A stacked Linear (arrays (L, ...)) -> decode_step's 5-tuple, or None for a format it lacks."""
    empty = lambda dtype, *shape: np.zeros(shape, dtype)
    if type(stack) is AwqLinear:
        L = stack.qweight.shape[0]
        arrays = (stack.qweight, stack.scales, stack.szeros, empty(np.float32, L, 0, 0))
    elif type(stack) is DenseLinear:
        L = stack.weight.shape[0]
        arrays = (empty(np.int32, L, 0, 0), empty(np.float32, L, 0, 0), empty(np.float32, L, 0, 0), stack.weight)
    else:  # int8 projections go through the readable path
        return None
    return arrays + (stack.bias if stack.bias is not None else empty(np.float32, L, 0),)
