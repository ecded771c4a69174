"""The whole single-token decode step as one compiled call (gpt-fast's ``decode_one_token``).

model.py's ``decoder_layer`` is the readable reference: one kernel call per
step, Python between them. Generating a token of a small model is ~300 such
calls, and for SmolLM2-135M the Python between them costs as much as the math
(PERF-NOTES 9). ``decode_step`` runs the same computation for one token over
all layers with no Python in between and no allocation: every intermediate
lives in a scratch buffer the caller made once (engine/decode.py).

    x -> L x [ rmsnorm -> qkv (+bias) -> rope -> cache -> attention -> o_proj -> +x
               rmsnorm -> gate_up -> silu(gate) * up -> down_proj -> +x ]
      -> rmsnorm -> lm_head -> logits

Each projection arrives stacked over layers as a 5-tuple
``(qweight (L,N,K/8) i32, scales (L,N,G) f32, szeros (L,N,G) f32, weight (L,N,K) f32, bias (L,N) f32)``:
an AWQ projection has an empty ``weight`` (L,0,0), a dense one empty AWQ
arrays (L,0,0), and no bias is an empty (L,0) array, so one compiled function
serves AWQ, dense and mixed models of either architecture.

Parallel work (``prange``, both cores): the matrix-vector products (row chunks)
and the attention (KV heads x position chunks, merged flash-decoding style).
The small vector steps (norms, rope, cache write, silu, residual adds) are the very kernels
model.py calls, on one-row views, and run on one thread.

Numba's on-disk cache (``cache=True``) keys each function on its own file only,
while the cached ``decode_step`` holds code from its sibling files: kernels/__init__.py
drops the whole cache when any kernel source changes (a stale mix crashed once).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activations import add_, silu_mul
from .attention import store_kv
from .awq import GEMV_CHUNKS, awq_matvec, awq_prepare_input
from .dense import dense_gemv
from .int8 import int8_gemv
from .norm import rmsnorm
from .rope import apply_rope

ATTN_CHUNK = 256  # cache positions per attention task: short contexts stay one task per KV head
RESCORE = 32  # with an int8 lm_head: the top candidates recomputed from the f32 weights


@njit(cache=True, parallel=True, fastmath=True)
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


@njit(cache=True, fastmath=True)
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


@njit(cache=True, fastmath=True)
def project(x, proj, layer, xp_buf, xsum_buf, dots_buf, out):
    """out = x @ W + b for one token through layer ``layer`` of a stacked projection 5-tuple.

    x (K,) f32; xp_buf, xsum_buf, dots_buf flat f32 scratch (at least K, G, GEMV_CHUNKS * K/8);
    out (N,) f32.
    """
    qweight, scales, szeros, weight, bias = proj
    if qweight.shape[1] > 0:
        n_words = qweight.shape[2]
        n_groups = scales.shape[2]
        xp = xp_buf[: 8 * n_words].reshape((8, n_words))
        xsum = xsum_buf[:n_groups]
        dots = dots_buf[: GEMV_CHUNKS * n_words].reshape((GEMV_CHUNKS, n_words))
        awq_prepare_input(x, xp, xsum)
        awq_matvec(xp, xsum, qweight[layer], scales[layer], szeros[layer], dots, out)
    else:
        dense_gemv(x, weight[layer], out)
    if bias.shape[1] > 0:
        b = bias[layer]
        for i in range(out.shape[0]):
            out[i] += b[i]


@njit(cache=True, fastmath=True)
def decode_step(x, layers, norms, final_norm, lm_head, k_cache, v_cache, pos, cos, sin, eps, n_heads,
                scratch, logits):
    """Run one token through every layer and the lm_head; write f32 logits (V,).

    x (H,) f32: the token's embedding, overwritten as the residual stream.
    layers: (qkv, o_proj, gate_up, down_proj), each a stacked 5-tuple (module docstring).
    norms (L, 2, H) f32: input and post-attention RMSNorm weights; final_norm (H,) f32;
    lm_head: (weight (V, H) f32, q8 (V, H) int8, scales8 (V,) f32): with q8 empty (0, 0) the logits come
    from the f32 weight; else from q8 (a quarter of the bytes), the top RESCORE then recomputed in f32;
    k_cache, v_cache (L, KV, S, D) f32, the token written at ``pos``;
    cos, sin (D/2,) f32 for position ``pos``; scratch: the tuple engine/decode.py makes.
    """
    qkv, o_proj, gate_up, down_proj = layers
    h, qkv_out, attn, mlp, act, proj, xp, xsum, dots, best, scores, o_part, m_part, l_part = scratch
    n_layers, n_kv, _, dim = k_cache.shape
    q_size = n_heads * dim
    row = lambda v: v.reshape((1, v.shape[0]))  # the (T, ...) kernels of decoder_layer take T = 1
    for l in range(n_layers):
        # attention block
        rmsnorm(row(x), norms[l, 0], eps, row(h))
        project(h, qkv, l, xp, xsum, dots, qkv_out)
        apply_rope(row(qkv_out), row(cos), row(sin), n_heads + n_kv, dim)
        kc = k_cache[l]
        vc = v_cache[l]
        store_kv(row(qkv_out), kc, vc, pos, n_heads)
        attend_one(qkv_out[:q_size], kc, vc, pos + 1, scores, o_part, m_part, l_part, attn)
        project(attn, o_proj, l, xp, xsum, dots, proj)
        add_(row(x), row(proj))
        # MLP block
        rmsnorm(row(x), norms[l, 1], eps, row(h))
        project(h, gate_up, l, xp, xsum, dots, mlp)
        silu_mul(row(mlp), row(act))
        project(act, down_proj, l, xp, xsum, dots, proj)
        add_(row(x), row(proj))
    rmsnorm(row(x), final_norm, eps, row(h))
    head, head_q8, head_s8 = lm_head
    if head_q8.shape[0] > 0:
        int8_gemv(h, head_q8, head_s8, logits)
        rescore_top(h, head, logits, best)
    else:
        dense_gemv(h, head, logits)
