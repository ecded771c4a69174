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

from ...kernels.awq import GEMV_CHUNKS
from ...kernels.decode import RESCORE, AwqStack, DenseHead, DenseStack, Int8Head, Layers, Scratch, decode_batch
from ...kernels.decode_attention import n_chunks
from ..checkpoint.config import ModelConfig
from .cache import KVCache
from .linear import AwqLinear, DenseLinear, Linear, quantize_int8
from .rope import cos_sin
from .weights import ModelWeights


class DecodeState:
    """What ``decode_batch`` reads besides the caches: stacked weights by name, and scratch buffers."""

    def __init__(self, config: ModelConfig, layers: Layers, norms: np.ndarray, final_norm: np.ndarray,
                 head: DenseHead | Int8Head, embed):
        self.config = config
        self.layers = layers
        self.norms = norms  # (L, 2, H) f32
        self.final_norm = final_norm  # (H,) f32
        self.head = head
        self.lm_head_int8 = isinstance(head, Int8Head)
        self.embed = embed  # Embedding: ids -> (T, H) f32
        self.scratch = self._scratch(1, 1)
        self._lists = ((), None, None)  # (the arrays' ids, k list, v list) of the last batch

    @classmethod
    def build(cls, config: ModelConfig, weights: ModelWeights, lm_head_int8: bool = False) -> "DecodeState | None":
        """The state for ``weights``, or None when they are not in a layout decode_batch takes.

        ``lm_head_int8``: read logits from an int8 copy of the f32 lm_head (one scale per
        vocabulary row), a quarter of the bytes of the largest matrix of a small model, then
        recompute the top RESCORE logits from the f32 rows: the argmax and the top logits are
        the reference's, the others differ by the int8 rounding (~0.5%).
        """
        stacks = [_stack(weights.stacks[name]) for name in Layers._fields]
        head = weights.lm_head
        if None in stacks or type(head) is not DenseLinear or head.bias is not None or \
                not head.weight.flags.c_contiguous:
            return None
        if lm_head_int8:
            q8, scales = quantize_int8(head.weight)
            head_tuple = Int8Head(head.weight, q8, scales, np.zeros(min(RESCORE, config.vocab_size), np.int64))
        else:
            head_tuple = DenseHead(head.weight)
        return cls(config, Layers(*stacks), weights.norms, weights.norm, head_tuple, weights.embed)

    def _scratch(self, rows: int, positions: int) -> Scratch:
        """Every intermediate of a step for ``rows`` sequences, the attention's for ``positions`` cache positions."""
        c = self.config
        H, I, heads = c.hidden_size, c.intermediate_size, c.num_attention_heads
        k_max = max(H, c.q_size, I)
        g_max = max([s.scales.shape[2] for s in self.layers if isinstance(s, AwqStack)] + [1])
        chunks = n_chunks(positions)
        f32 = lambda *shape: np.zeros(shape, np.float32)
        return Scratch(h=f32(rows, H), qkv=f32(rows, c.q_size + 2 * c.kv_size), attn=f32(rows, c.q_size),
                       mlp=f32(rows, 2 * I), act=f32(rows, I), proj=f32(rows, H), xp=f32(k_max), xsum=f32(g_max),
                       dots=f32(GEMV_CHUNKS * (k_max // 8 + 1)), scores=f32(rows, heads, positions),
                       o_part=f32(rows, heads, chunks, c.head_dim), m_part=f32(rows, heads, chunks),
                       l_part=f32(rows, heads, chunks))

    def scratch_for(self, rows: int, positions: int) -> Scratch:
        """The scratch for ``rows`` sequences reaching ``positions`` positions, regrown (never shrunk) to fit."""
        s = self.scratch
        if rows > s.h.shape[0] or positions > s.scores.shape[2]:
            self.scratch = self._scratch(max(rows, s.h.shape[0]), max(positions, s.scores.shape[2]))
        s = self.scratch
        if rows == s.h.shape[0]:
            return s
        return Scratch(*(a if a.ndim == 1 else a[:rows] for a in s))

    def cache_lists(self, caches: list[KVCache]) -> tuple[List, List]:
        """Typed lists of the caches' k and v arrays for the kernel, rebuilt only when an array changed."""
        key = tuple(id(a) for cache in caches for a in (cache.k, cache.v))
        if key != self._lists[0]:
            self._lists = (key, List([cache.k for cache in caches]), List([cache.v for cache in caches]))
        return self._lists[1], self._lists[2]


def decode_tokens(state: DecodeState, tokens: np.ndarray, caches: list[KVCache]) -> np.ndarray:
    """Logits (B, V) f32 for token b at position caches[b].pos, advancing every cache by one.

    The caller (Model) has validated the tokens and the caches, and made room in each cache
    for its new position (``KVCache.ensure``). The scratch buffers are the state's own: one
    step at a time per model.
    """
    c = state.config
    positions = np.array([cache.pos for cache in caches], np.int64)
    angles = [cos_sin(c.rope, c.head_dim, c.max_position_embeddings, int(p), 1) for p in positions]
    cos = np.concatenate([a[0] for a in angles])  # (B, D/2)
    sin = np.concatenate([a[1] for a in angles])
    x = state.embed(np.asarray(tokens))  # (B, H), the residual streams
    scratch = state.scratch_for(len(caches), int(positions.max()) + 1)
    k_list, v_list = state.cache_lists(caches)
    logits = np.empty((len(caches), c.vocab_size), np.float32)
    decode_batch(x, state.layers, state.norms, state.final_norm, state.head, k_list, v_list, positions, cos, sin,
                 np.float32(c.rms_norm_eps), c.num_attention_heads, scratch, logits)
    for cache in caches:
        cache.pos += 1
    return logits


def _stack(linear: Linear) -> AwqStack | DenseStack | None:
    """A stacked Linear (arrays (L, ...)) -> decode_step's named stack, or None for a format it lacks."""
    if type(linear) is AwqLinear:
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
