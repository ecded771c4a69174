"""The whole single-token decode step as one compiled call (gpt-fast's ``decode_one_token``).

Why a second forward exists. engine/model/forward.py's ``decoder_layer`` is the
readable reference: one kernel call per step, Python in between. Generating one
token of a small model is ~300 such calls, and for SmolLM2-135M the Python between
them costs as much as the math (docs/PERFORMANCE.md, item 9). ``decode_step`` runs
the same computation for one token over all layers with no Python in between and no
allocation: every intermediate lives in a ``Scratch`` buffer made once by
engine/model/fast_decode.py. tests/test_decode.py holds the two to the same logits.

Each step mirrors ``decoder_layer`` line for line and calls the very same kernels
(on one-row views) for the small vector steps:

    decoder_layer (forward.py)                     decode_step (here)
    ops.rmsnorm(x, layer.input_norm, ...)          rmsnorm(row(x), norms[l, 0], ...)
    qkv = layer.qkv(h)                             project(h, layers.qkv, l, ...)
    ops.apply_rope / ops.store_kv                  apply_rope / store_kv
    ops.attention(...)                             attend_one (flash-decoding chunks, below)
    ops.add_(x, layer.o_proj(attn))                project(attn, layers.o_proj, ...); add_
    ops.rmsnorm(x, layer.post_norm, ...)           rmsnorm(row(x), norms[l, 1], ...)
    ops.silu_mul(layer.gate_up(h), gate)           project(h, layers.gate_up, ...); silu_mul
    ops.add_(x, layer.down_proj(gate))             project(act, layers.down_proj, ...); add_
    Model.forward: rmsnorm, lm_head                rmsnorm; head_logits

Weights arrive by name: ``Layers`` holds the four projections, each an ``AwqStack``
or a ``DenseStack`` over all layers (arrays (L, ...)); ``project`` is compiled once
per format, so AWQ, dense and mixed models of either architecture share this code.
The lm_head is a ``DenseHead`` or an ``Int8Head`` (int8 screen, exact f32 rescoring).

Parallel work (``prange``, both cores): the matrix-vector products (row chunks) and
the attention (KV heads x position chunks, merged flash-decoding style). The small
vector steps run on one thread.

Numba's on-disk cache (``cache=True``) keys each function on its own file only,
while the cached ``decode_step`` holds code from its sibling files: kernels/__init__.py
drops the whole cache when any kernel source changes (a stale mix crashed once).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange
from numba.extending import overload

from .activations import add_, silu_mul
from .attention import store_kv
from .awq import GEMV_CHUNKS, awq_matvec, awq_prepare_input
from .dense import dense_gemv
from .int8 import int8_gemv
from .norm import rmsnorm
from .rope import apply_rope

ATTN_CHUNK = 256  # cache positions per attention task: short contexts stay one task per KV head
RESCORE = 32  # with an int8 lm_head: the top candidates recomputed from the f32 weights


class AwqStack(NamedTuple):
    """One AWQ projection of every layer, in the kernel layout (kernels/awq.py)."""

    qweight: np.ndarray  # (L, N, K/8) int32
    scales: np.ndarray  # (L, N, G) f32
    szeros: np.ndarray  # (L, N, G) f32
    bias: np.ndarray  # (L, N) f32, zeros when the checkpoint has none


class DenseStack(NamedTuple):
    """One float projection of every layer."""

    weight: np.ndarray  # (L, N, K) f32
    bias: np.ndarray  # (L, N) f32, zeros when the checkpoint has none


class Layers(NamedTuple):
    """The four projections of the decoder layers, each an AwqStack or a DenseStack."""

    qkv: tuple  # H -> (n_heads + 2 KV) * D
    o_proj: tuple  # n_heads * D -> H
    gate_up: tuple  # H -> 2I
    down_proj: tuple  # I -> H


class DenseHead(NamedTuple):
    """The lm_head as f32 rows: logits = weight @ h."""

    weight: np.ndarray  # (V, H) f32


class Int8Head(NamedTuple):
    """The lm_head screened in int8 (a quarter of the bytes), its top RESCORE rows recomputed in f32."""

    weight: np.ndarray  # (V, H) f32
    q8: np.ndarray  # (V, H) int8
    scales: np.ndarray  # (V,) f32
    best: np.ndarray  # (RESCORE,) int64 scratch: the candidates' ids


class Scratch(NamedTuple):
    """Every intermediate of one step, allocated once (engine/model/fast_decode.py)."""

    h: np.ndarray  # (H,) f32: the normed residual
    qkv: np.ndarray  # ((n_heads + 2 KV) * D,) f32
    attn: np.ndarray  # (n_heads * D,) f32
    mlp: np.ndarray  # (2I,) f32: gate | up
    act: np.ndarray  # (I,) f32: silu(gate) * up
    proj: np.ndarray  # (H,) f32: o_proj or down_proj output
    xp: np.ndarray  # (K_max,) f32: the AWQ GEMV's input laid out by nibble
    xsum: np.ndarray  # (G_max,) f32: the input's group sums
    dots: np.ndarray  # (GEMV_CHUNKS * (K_max/8 + 1),) f32: per-chunk word dots
    scores: np.ndarray  # (n_heads, S) f32: attention scores over the cache
    o_part: np.ndarray  # (n_heads, C, D) f32: each position chunk's partial output
    m_part: np.ndarray  # (n_heads, C) f32: its running max
    l_part: np.ndarray  # (n_heads, C) f32: its softmax denominator


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def attend_one(q, k_cache, v_cache, n_pos, scores, o_part, m_part, l_part, out):
    """One query token's attention over cache positions 0..n_pos-1 (it sits at n_pos-1).

    q (n_heads * D,) f32; k_cache, v_cache (KV, S, D) f32 of this layer; scores (n_heads, S) f32,
    o_part (n_heads, C, D), m_part, l_part (n_heads, C) f32 scratch; out (n_heads * D,) f32.
    Each task is one KV head over one chunk of positions: the KV rows are read once for
    all query heads that share them, and the chunks' partial softmaxes are merged after.
    """
    n_kv, _, dim = k_cache.shape
    n_heads = scores.shape[0]
    group = n_heads // n_kv
    n_chunks = min(o_part.shape[1], (n_pos + ATTN_CHUNK - 1) // ATTN_CHUNK)
    scale = np.float32(1.0 / np.sqrt(dim))
    for task in prange(n_kv * n_chunks):
        kv = task // n_chunks
        c = task % n_chunks
        s0 = c * n_pos // n_chunks
        s1 = (c + 1) * n_pos // n_chunks
        keys = k_cache[kv, s0:s1]
        vals = v_cache[kv, s0:s1]
        for gi in range(group):
            h = kv * group + gi
            qh = q[h * dim : (h + 1) * dim]
            sc = scores[h, s0:s1]
            best = np.float32(-np.inf)
            for s in range(s1 - s0):
                krow = keys[s]
                acc = np.float32(0.0)
                for i in range(dim):
                    acc += qh[i] * krow[i]
                sc[s] = acc * scale
                best = max(best, sc[s])
            total = np.float32(0.0)
            for s in range(s1 - s0):
                e = np.exp(sc[s] - best)
                sc[s] = e
                total += e
            o = o_part[h, c]
            o[:] = 0.0
            for s in range(s1 - s0):
                p = sc[s]
                vrow = vals[s]
                for i in range(dim):
                    o[i] += p * vrow[i]
            m_part[h, c] = best
            l_part[h, c] = total
    for h in range(n_heads):
        best = np.float32(-np.inf)
        for c in range(n_chunks):
            best = max(best, m_part[h, c])
        total = np.float32(0.0)
        oh = out[h * dim : (h + 1) * dim]
        oh[:] = 0.0
        for c in range(n_chunks):
            w = np.exp(m_part[h, c] - best)
            total += w * l_part[h, c]
            oc = o_part[h, c]
            for i in range(dim):
                oh[i] += w * oc[i]
        inv = np.float32(1.0) / total
        for i in range(dim):
            oh[i] *= inv


@njit(cache=True, nogil=True, fastmath=True)
def rescore_top(h, weight, logits, best):
    """Recompute the ``len(best)`` largest logits exactly: logits[n] = h . weight[n] for those n.

    h (H,) f32; weight (V, H) f32; logits (V,) f32, approximate on entry; best (R,) int64 scratch.
    An int8 lm_head then leaves the argmax (and every top-R logit) as the f32 head computes
    it, as long as the f32 winner is among the int8 head's top R.
    """
    n_best = best.shape[0]
    for r in range(n_best):
        best[r] = r
    worst = 0
    for r in range(n_best):
        if logits[best[r]] < logits[best[worst]]:
            worst = r
    for n in range(n_best, logits.shape[0]):
        if logits[n] > logits[best[worst]]:
            best[worst] = n
            for r in range(n_best):
                if logits[best[r]] < logits[best[worst]]:
                    worst = r
    for r in range(n_best):
        row = weight[best[r]]
        acc = np.float32(0.0)
        for i in range(h.shape[0]):
            acc += h[i] * row[i]
        logits[best[r]] = acc


def project(x, proj, layer, scratch, out):
    """out = x @ W^T + b for one token through layer ``layer`` of an AwqStack or a DenseStack.

    x (K,) f32; out (N,) f32. Compiled once per stack type (the overload below).
    """


@overload(project)
def _project(x, proj, layer, scratch, out):
    kind = getattr(proj, "instance_class", None)
    if kind is AwqStack:
        def awq(x, proj, layer, scratch, out):
            n_words = proj.qweight.shape[2]
            n_groups = proj.scales.shape[2]
            xp = scratch.xp[: 8 * n_words].reshape((8, n_words))
            xsum = scratch.xsum[:n_groups]
            dots = scratch.dots[: GEMV_CHUNKS * n_words].reshape((GEMV_CHUNKS, n_words))
            awq_prepare_input(x, xp, xsum)
            awq_matvec(xp, xsum, proj.qweight[layer], proj.scales[layer], proj.szeros[layer], dots, out)
            _add_bias(out, proj.bias[layer])
        return awq
    if kind is DenseStack:
        def dense(x, proj, layer, scratch, out):
            dense_gemv(x, proj.weight[layer], out)
            _add_bias(out, proj.bias[layer])
        return dense
    return None


@njit(inline="always")
def _add_bias(out, bias):
    for i in range(out.shape[0]):
        out[i] += bias[i]


def head_logits(h, head, logits):
    """logits (V,) f32 = lm_head @ h for h (H,) f32, through a DenseHead or an Int8Head."""


@overload(head_logits)
def _head_logits(h, head, logits):
    kind = getattr(head, "instance_class", None)
    if kind is DenseHead:
        def dense(h, head, logits):
            dense_gemv(h, head.weight, logits)
        return dense
    if kind is Int8Head:
        def screened(h, head, logits):
            int8_gemv(h, head.q8, head.scales, logits)
            rescore_top(h, head.weight, logits, head.best)
        return screened
    return None


@njit(cache=True, nogil=True, fastmath=True)
def decode_step(x, layers, norms, final_norm, head, k_cache, v_cache, pos, cos, sin, eps, n_heads,
                scratch, logits):
    """Run one token through every layer and the lm_head; write f32 logits (V,).

    x (H,) f32: the token's embedding, overwritten as the residual stream; layers: Layers;
    norms (L, 2, H) f32: input and post-attention RMSNorm weights; final_norm (H,) f32;
    head: DenseHead or Int8Head; k_cache, v_cache (L, KV, S, D) f32, the token written at ``pos``;
    cos, sin (D/2,) f32 for position ``pos``; scratch: Scratch; logits (V,) f32.
    """
    n_layers, n_kv, _, dim = k_cache.shape
    q_size = n_heads * dim
    s = scratch
    row = lambda v: v.reshape((1, v.shape[0]))  # the (T, ...) kernels of decoder_layer take T = 1
    for l in range(n_layers):
        # attention block
        rmsnorm(row(x), norms[l, 0], eps, row(s.h))
        project(s.h, layers.qkv, l, s, s.qkv)
        apply_rope(row(s.qkv), row(cos), row(sin), n_heads + n_kv, dim)
        kc = k_cache[l]
        vc = v_cache[l]
        store_kv(row(s.qkv), kc, vc, pos, n_heads)
        attend_one(s.qkv[:q_size], kc, vc, pos + 1, s.scores, s.o_part, s.m_part, s.l_part, s.attn)
        project(s.attn, layers.o_proj, l, s, s.proj)
        add_(row(x), row(s.proj))
        # MLP block
        rmsnorm(row(x), norms[l, 1], eps, row(s.h))
        project(s.h, layers.gate_up, l, s, s.mlp)
        silu_mul(row(s.mlp), row(s.act))
        project(s.act, layers.down_proj, l, s, s.proj)
        add_(row(x), row(s.proj))
    rmsnorm(row(x), final_norm, eps, row(s.h))
    head_logits(s.h, head, logits)
