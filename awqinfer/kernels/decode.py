"""The decode step as one compiled call: one new token for each of B sequences (gpt-fast's ``decode_one_token``).

Why a second forward exists. engine/model/forward.py's ``decoder_layer`` is the
readable reference: one kernel call per step, Python in between. Generating one
token of a small model is ~300 such calls, and for SmolLM2-135M the Python between
them costs as much as the math (docs/PERFORMANCE.md, item 9). ``decode_batch`` runs
the same computation over all layers with no Python in between and no allocation:
every intermediate lives in a ``Scratch`` buffer made once by engine/model/fast_decode.py.
tests/test_decode.py holds the two to the same logits.

Row b of the batch is sequence b's new token at ``positions[b]`` of its own KV cache.
Decode on a CPU is bound by reading the weights, so B sequences stepped together share
one read of them: every projection is applied to all B rows at once (kernels/qdot.py);
only attention runs per sequence, over its own cache (decode_attention.py). A single
token is B = 1.

Each step mirrors ``decoder_layer`` line for line and calls the very same kernels for
the small row-wise steps:

    decoder_layer (forward.py)                     decode_batch (here)
    ops.rmsnorm(x, layer.input_norm, ...)          rmsnorm(x, norms[l, 0], ...)
    qkv = layer.qkv(h)                             project(h, layers.qkv, l, ...)
    ops.apply_rope / ops.store_kv                  apply_rope / store_kv (each row its cache)
    ops.attention(...)                             attend_rows (flash-decoding chunks)
    ops.add_(x, layer.o_proj(attn))                project(attn, layers.o_proj, ...); add_
    ops.rmsnorm(x, layer.post_norm, ...)           rmsnorm(x, norms[l, 1], ...)
    ops.silu_mul(layer.gate_up(h), gate)           project(h, layers.gate_up, ...); silu_mul
    ops.add_(x, layer.down_proj(gate))             project(act, layers.down_proj, ...); add_
    Model.forward: rmsnorm, lm_head                rmsnorm; head_logits
    lora(name, input, output) after each linear     lora_add (kernels/lora.py), rows with an adapter

Weights arrive by name: ``Layers`` holds the four projections, each an ``AwqStack``
or a ``DenseStack`` over all layers (arrays (L, ...)); ``project`` is compiled once
per format, so AWQ, dense and mixed models of either architecture share this code.
The lm_head is a ``DenseHead`` or an ``Int8Head`` (int8 screen, exact rescoring).

Where it differs from the reference: AWQ projections take their input in 15-bit fixed
point per 64 values (kernels/qdot.py, integer dot products: the 4-bit GEMV is otherwise
bound by unpacking, not memory), which moves each output by ~3e-5 relative; the Int8Head
screens with int8 weights and activations (~1%) and recomputes its top RESCORE logits
exactly, so greedy tokens keep the reference's argmax whenever the screen's top RESCORE
holds it.

Parallel work (``prange``, both cores): the matrix-vector products (row chunks) and
the attention (sequences x KV heads x position chunks). The small row-wise steps run
on one thread.

Numba's on-disk cache (``cache=True``) keys each function on its own file only,
while the cached ``decode_batch`` holds code from its sibling files: kernels/__init__.py
drops the whole cache when any kernel source changes (a stale mix crashed once).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit
from numba.extending import overload

from .activations import add_, silu_mul
from .attention import store_kv
from .awq import GEMV_CHUNKS
from .decode_attention import attend_rows
from .dense import dense_gemv, widen
from .int8_screen import int8_matvec_q
from .lora import lora_add
from .norm import rmsnorm
from .qdot import ACT_BLOCK, awq_matvec_q, quantize_rows
from .rope import apply_rope

RESCORE = 32  # with an int8 lm_head: the top candidates recomputed from the f32 weights


class AwqStack(NamedTuple):
    """One AWQ projection of every layer, in the kernel layout (kernels/awq.py); K a multiple of 64, groups of 32 or 64k.

    Applied to fixed-point activations (kernels/qdot.py): ~3e-5 relative error per output against f32.
    """

    qweight: np.ndarray  # (L, N, K/8) int32
    scales: np.ndarray  # (L, N, G) f32
    zeros: np.ndarray  # (L, N, G) u8
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
    """The lm_head as stored: logits = rows @ h, exactly the readable forward's."""

    rows: np.ndarray  # (V, H) f32, or IEEE half (f16) / bfloat16 bits as uint16
    bf16: bool  # with uint16 rows: bfloat16 (else f16)


class Int8Head(NamedTuple):
    """The lm_head screened in int8 (weights and activations), its top RESCORE rows recomputed exactly.

    The argmax and the top RESCORE logits are the reference's (computed from the same rows as
    the readable forward's lm_head, widened from ``rows``); the other logits carry the int8
    rounding of weights and activations (~1% relative).
    """

    q8: np.ndarray  # (V, H) int8, columns in kernel order (kernels/qdot.py)
    scales: np.ndarray  # (V,) f32 per vocabulary row
    rows: np.ndarray  # (V, H) the exact rows: f32, or IEEE half (f16) / bfloat16 bits as uint16
    bf16: bool  # with uint16 rows: bfloat16 (else f16)
    best: np.ndarray  # (RESCORE,) int64 scratch: the candidates' ids


class Scratch(NamedTuple):
    """Every intermediate of one step for B rows, allocated once (engine/model/fast_decode.py)."""

    h: np.ndarray  # (B, H) f32: the normed residual
    qkv: np.ndarray  # (B, (n_heads + 2 KV) * D) f32
    attn: np.ndarray  # (B, n_heads * D) f32
    mlp: np.ndarray  # (B, 2I) f32: gate | up
    act: np.ndarray  # (B, I) f32: silu(gate) * up
    proj: np.ndarray  # (B, H) f32: o_proj or down_proj output
    xq: np.ndarray  # (B * 2 K_max,) int8, flat: a projection's input in fixed point, two digits in kernel order (qdot.py)
    xscale: np.ndarray  # (B * K_max / 64,) f32, flat: its per-block scales
    xsum: np.ndarray  # (B * K_max / 8,) int32, flat: its sums per half block, as qdot.quantize_rows lays them
    scores: np.ndarray  # (B, n_heads, S) f32: attention scores over each cache
    o_part: np.ndarray  # (B, n_heads, C, D) f32: each position chunk's partial output
    m_part: np.ndarray  # (B, n_heads, C) f32: its running max
    l_part: np.ndarray  # (B, n_heads, C) f32: its softmax denominator


@njit(cache=True, fastmath=True, nogil=True)
def rescore_top(h, rows, bf16, logits, best):
    """Recompute the ``len(best)`` largest logits exactly: logits[n] = h . rows[n] for those n.

    h (H,) f32; rows (V, H) f32 or 16-bit float bits (uint16, ``bf16`` says which); logits (V,) f32,
    approximate on entry; best (R,) int64 scratch. An int8 lm_head then leaves the argmax (and
    every top-R logit) as the exact head computes it, as long as the exact winner is among the
    int8 head's top R.
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
        exact = rows[best[r]]
        acc = np.float32(0.0)
        for i in range(h.shape[0]):
            acc += h[i] * widen(exact[i], bf16)
        logits[best[r]] = acc


def project(x, proj, layer, scratch, out):
    """out = x @ W^T + b for B rows through layer ``layer`` of an AwqStack or a DenseStack.

    x (B, K) f32; out (B, N) f32. Compiled once per stack type (the overload below). AWQ reads
    each weight once for all B rows (kernels/qdot.py); dense weights are read once per row.
    """


@overload(project)
def _project(x, proj, layer, scratch, out):
    kind = getattr(proj, "instance_class", None)
    if kind is AwqStack:
        def awq(x, proj, layer, scratch, out):
            xq, xscale, xsum = quantized(x, scratch)
            awq_matvec_q(xq, xscale, xsum, proj.qweight[layer], proj.scales[layer], proj.zeros[layer], out,
                         GEMV_CHUNKS)
            _add_bias(out, proj.bias[layer])
        return awq
    if kind is DenseStack:
        def dense(x, proj, layer, scratch, out):
            for b in range(x.shape[0]):
                dense_gemv(x[b], proj.weight[layer], out[b])
            _add_bias(out, proj.bias[layer])
        return dense
    return None


@njit(inline="always")
def quantized(x, scratch):
    """x (B, K) f32 converted into the scratch (kernels/qdot.py): xq (B, 2, K) int8, xscale (B, K/64), xsum (B, K/8)."""
    n_rows, k = x.shape
    xq = scratch.xq[: n_rows * 2 * k].reshape((n_rows, 2, k))
    xscale = scratch.xscale[: n_rows * (k // ACT_BLOCK)].reshape((n_rows, k // ACT_BLOCK))
    xsum = scratch.xsum[: n_rows * (k // 8)].reshape((n_rows, k // 8))
    quantize_rows(x, xq, xscale, xsum)
    return xq, xscale, xsum


@njit(inline="always")
def _add_bias(out, bias):
    for b in range(out.shape[0]):
        for i in range(out.shape[1]):
            out[b, i] += bias[i]


def head_logits(h, head, scratch, logits):
    """logits (B, V) f32 = lm_head @ h for h (B, H) f32, through a DenseHead or an Int8Head."""


@overload(head_logits)
def _head_logits(h, head, scratch, logits):
    kind = getattr(head, "instance_class", None)
    if kind is DenseHead:
        def dense(h, head, scratch, logits):
            for b in range(h.shape[0]):
                dense_gemv(h[b], head.rows, logits[b], head.bf16)
        return dense
    if kind is Int8Head:
        def screened(h, head, scratch, logits):
            xq, xscale, _ = quantized(h, scratch)
            int8_matvec_q(xq, xscale, head.q8, head.scales, logits, GEMV_CHUNKS)
            for b in range(h.shape[0]):
                rescore_top(h[b], head.rows, head.bf16, logits[b], head.best)
        return screened
    return None


@njit(cache=True, fastmath=True, nogil=True)
def decode_batch(x, layers, norms, final_norm, head, k_caches, v_caches, positions, cos, sin, eps, n_heads,
                 scratch, lora, adapters, logits):
    """Run one new token of each of B sequences through every layer and the lm_head; write logits (B, V).

    x (B, H) f32: the tokens' embeddings, overwritten as the residual streams; layers: Layers;
    norms (L, 2, H) f32: input and post-attention RMSNorm weights; final_norm (H,) f32;
    head: DenseHead or Int8Head; k_caches, v_caches: typed lists of B arrays (L, KV, S_b, D), f32 or
    f16 bits, row b's token written at positions[b] (int64, (B,)); cos, sin (B, D/2) f32 for those
    positions; scratch: Scratch for B rows; lora: LoraLayers (kernels/lora.py) and adapters (B,)
    int64, each row's adapter index in them (-1: none; checked by the caller); logits (B, V) f32.
    """
    n_layers = norms.shape[0]
    n_kv = k_caches[0].shape[1]
    dim = k_caches[0].shape[3]
    s = scratch
    for l in range(n_layers):
        # attention block
        rmsnorm(x, norms[l, 0], eps, s.h)
        project(s.h, layers.qkv, l, s, s.qkv)
        lora_add(s.h, lora.qkv, l, adapters, s.qkv)
        apply_rope(s.qkv, cos, sin, n_heads + n_kv, dim)
        for b in range(x.shape[0]):
            store_kv(s.qkv[b : b + 1], k_caches[b][l], v_caches[b][l], positions[b], n_heads)
        attend_rows(s.qkv, k_caches, v_caches, l, positions, s.scores, s.o_part, s.m_part, s.l_part, s.attn)
        project(s.attn, layers.o_proj, l, s, s.proj)
        lora_add(s.attn, lora.o_proj, l, adapters, s.proj)
        add_(x, s.proj)
        # MLP block
        rmsnorm(x, norms[l, 1], eps, s.h)
        project(s.h, layers.gate_up, l, s, s.mlp)
        lora_add(s.h, lora.gate_up, l, adapters, s.mlp)
        silu_mul(s.mlp, s.act)
        project(s.act, layers.down_proj, l, s, s.proj)
        lora_add(s.act, lora.down_proj, l, adapters, s.proj)
        add_(x, s.proj)
    rmsnorm(x, final_norm, eps, s.h)
    head_logits(s.h, head, s, logits)
