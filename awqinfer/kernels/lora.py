"""LoRA deltas for the compiled decode step: out[b] += B (A x[b]), each row with its own adapter (or none).

A LoRA adapter adds ``scale * B @ (A @ x)`` to a projection's output, with A (r, K) and
B (N, r) of a small rank r (Hu et al. 2021; PEFT's ``lora.Linear``). The base weights stay
shared: every row of a batch reads the same AWQ/int8/dense weights, and only this small
product differs per row. engine/model/adapters.py stacks every loaded adapter of one fused
projection into a ``LoraStack`` (scale folded into B), padded to the largest rank R:

    qkv holds three parts (q, k, v), gate_up two (gate, up), o_proj and down_proj one.
    Part p of adapter a: t = rows p*R .. p*R + rank[a] of a[a, l] times x, then its output
    columns parts[p, 0] .. parts[p, 1] get t @ b[a, l, :rank[a]] (B stored transposed, (R, N),
    so that this is a contiguous multiply-add along the outputs).

A part the adapter does not target is zeros; a projection it does not target has rank 0
and is skipped. The readable forward computes the same sum with numpy
(adapters.py's ``add_lora``); tests/test_lora.py holds the two to each other and to peft.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit


class LoraStack(NamedTuple):
    """Every loaded adapter of one fused projection, over all layers, padded to the largest rank R."""

    a: np.ndarray  # (n_adapters, L, P * R, K) f32: the parts' A matrices, part p at rows p*R..
    b: np.ndarray  # (n_adapters, L, R, N) f32: B transposed, times the adapter's scale
    parts: np.ndarray  # (P, 2) int64: each part's output columns [lo, hi) (q, k, v of qkv, ...)
    rank: np.ndarray  # (n_adapters,) int64: the adapter's rank, 0 where it leaves this projection alone
    t: np.ndarray  # (P * R,) f32 scratch: A @ x of one row


class LoraLayers(NamedTuple):
    """The four fused projections' LoraStacks, named as kernels/decode.py's ``Layers``."""

    qkv: LoraStack
    o_proj: LoraStack
    gate_up: LoraStack
    down_proj: LoraStack


@njit(cache=True, fastmath=True, nogil=True)
def lora_add(x, stack, layer, adapters, out):
    """out[b] += B_a (A_a x[b]) with a = adapters[b] for every row b whose adapter is not -1.

    x (B, K) f32: the projection's input; stack: LoraStack; layer: which layer's matrices;
    adapters (B,) int64 in -1..n_adapters-1 (checked by the caller: Numba does not check
    bounds); out (B, N) f32: the projection's output, added to in place. One thread: at small
    ranks the product is small next to the projection it rides on (benchmarks/lora.py measures it).
    """
    n_rank = stack.b.shape[2]
    if n_rank == 0:
        return
    t = stack.t
    for row in range(x.shape[0]):
        a = adapters[row]
        if a < 0:
            continue
        r = stack.rank[a]
        if r == 0:
            continue
        a_mat = stack.a[a, layer]
        b_mat = stack.b[a, layer]
        for p in range(stack.parts.shape[0]):
            for j in range(r):
                i = p * n_rank + j
                acc = np.float32(0.0)
                for k in range(x.shape[1]):
                    acc += a_mat[i, k] * x[row, k]
                t[i] = acc
        for p in range(stack.parts.shape[0]):
            for j in range(r):
                c = t[p * n_rank + j]
                for n in range(stack.parts[p, 0], stack.parts[p, 1]):
                    out[row, n] += c * b_mat[j, n]
