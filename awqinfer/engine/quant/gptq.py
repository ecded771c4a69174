"""GPTQ's error compensation (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), on AWQ's 4-bit grid, one linear at a time.

Rounding one input column of W (N, K) changes the layer's output by X[:, k] * err; the
columns not yet rounded can absorb most of that change. With H = X^T X (K, K) and
U the upper Cholesky factor of H^-1 (H^-1 = U^T U), the columns are rounded in order
k = 0..K-1, and after each

    err = (W[:, k] - Q(W[:, k])) / U[k, k]
    W[:, k+1:] -= err (outer) U[k, k+1:]

which is the optimal update of the remaining columns for the output error
||X W^T - X Q^T||^2 (GPTQ's Algorithm 1). Updates are applied lazily, a block of
columns at a time (one matrix product per block), as the paper does.

The grid of a group of ``group_size`` columns (its fp16 scale and 4-bit zero,
rounding.py) is fixed when the loop reaches the group's first column, from the
weights as the earlier columns' errors have left them, as GPTQ's ``groupsize``
option does. Its range is chosen by AWQ's clipping search (awq_search.py's
``search_clip``) on that group's block of H, so GPTQ rounds on the grid AWQ would pick
for these weights; a value outside the clipped range rounds to the grid's end and
its error, too, is carried to the later columns.

Act order (GPTQ's ``desc_act``, what METHODS uses): the columns are rounded by decreasing H
diagonal, the inputs with the most energy first, while the most columns are left to absorb
their error. The groups stay contiguous, as AutoAWQ's layout needs, so each group's grid is
fixed before the loop from the weights as they are (``static_groups``).

Dampening: H + 1% of its mean diagonal on the diagonal (GPTQ's ``percdamp``); a
column whose input is always zero is set to zero (its H diagonal to 1).
"""

from __future__ import annotations

import numpy as np

from .rounding import MAX_INT, grid

DAMP = 0.01  # fraction of H's mean diagonal added to its diagonal
BLOCK = 128  # columns per lazy update (rounded up to a multiple of the group size)


def inverse_cholesky(gram: np.ndarray, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """(U, dead): the upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, and the inputs never active.

    gram (K, K): X^T X of the layer's calibration inputs; computed in float64.
    """
    h = np.array(gram, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    return np.linalg.cholesky(np.linalg.inv(h)).T, dead


def group_grid(part: np.ndarray, block: np.ndarray, clip=None):
    """The grid of one group: zeros (N,) f32 and scales (N,) f16 of ``part`` (N, g), its range picked by ``clip``."""
    if clip is not None:
        bound = clip(block, part)
        part = np.clip(part, -bound, bound)
    zero, scale = grid(part[:, None, :])
    return zero[:, 0, 0], scale[:, 0]


def gptq_quantize(weight: np.ndarray, gram: np.ndarray, group_size: int, clip=None, act_order: bool = False):
    """Round ``weight`` (N, K) f32 to 4 bits with GPTQ's error feedback through ``gram`` (K, K) = X^T X.

    clip: None, or a function (gram_block (g, g), weights (N, g)) -> bound (N, 1) that picks each
    group's range (awq_search.search_clip); None uses the group's full range.
    act_order: round the columns in order of decreasing H diagonal (largest inputs first), each on its
    group's grid fixed beforehand from the unchanged weights (GPTQ's ``desc_act`` with ``static_groups``,
    which keeps groups contiguous, as AutoAWQ's layout needs).
    Returns (codes (N, K) uint8, zeros (N, K/g) uint8, scales (N, K/g) f16), as rounding.rtn_quantize,
    with W ~ (codes - zero) * scale.
    """
    n, k = weight.shape
    groups = k // group_size
    zeros = np.empty((groups, n), np.float32)
    scales = np.empty((groups, n), np.float16)
    order = np.argsort(-np.diag(gram), kind="stable") if act_order else np.arange(k)
    if act_order:
        for g in range(groups):
            cols = slice(g * group_size, (g + 1) * group_size)
            zeros[g], scales[g] = group_grid(weight[:, cols], gram[cols, cols], clip)
    u, dead = inverse_cholesky(gram[np.ix_(order, order)])
    w = np.array(weight.T[order], dtype=np.float32)  # (K, N): column order[i] of W is the contiguous row w[i]
    w[dead] = 0.0
    u = u.astype(np.float32)
    codes = np.empty((k, n), np.uint8)
    block = -(-BLOCK // group_size) * group_size
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        err = np.empty((b1 - b0, n), np.float32)
        for i in range(b0, b1):
            g = order[i] // group_size
            if not act_order and i % group_size == 0:  # the group's grid, from the weights as they are now
                cols = slice(i, i + group_size)
                zeros[g], scales[g] = group_grid(w[cols].T, gram[cols, cols], clip)
            step = scales[g].astype(np.float32)
            q = np.clip(np.round(w[i] / step) + zeros[g], 0, MAX_INT)
            codes[order[i]] = q
            err[i - b0] = (w[i] - (q - zeros[g]) * step) / u[i, i]
            w[i + 1:b1] -= np.outer(u[i, i + 1:b1], err[i - b0])
        w[b1:] -= u[b0:b1, b1:].T @ err
    return codes.T.copy(), zeros.T.astype(np.uint8), np.ascontiguousarray(scales.T)


def refit_scales(weight: np.ndarray, gram: np.ndarray, codes: np.ndarray, zeros: np.ndarray,
                 scales: np.ndarray, rows: int = 256) -> np.ndarray:
    """The fp16 scales (N, K/g) that, for these codes and zeros, minimise each row's output error.

    Row n's weights are sum_g s_g v_g with v_g = (codes - zero) on group g's columns, so its
    error (w - sum s_g v_g) H (w - sum s_g v_g)^T is a quadratic in its G scales: A s = b with
    A[g, h] = v_g H v_h^T and b[g] = v_g H w^T (H = ``gram``). A scale whose solution is not
    positive and finite keeps its old value. ``rows`` bounds the memory: (rows, G, K) f32.
    """
    n, k = weight.shape
    groups = zeros.shape[1]
    size = k // groups
    v = codes.reshape(n, groups, size).astype(np.float32) - zeros[..., None]
    out = scales.copy()
    for r0 in range(0, n, rows):
        vr = v[r0:r0 + rows]
        vh = np.stack([vr[:, g] @ gram[g * size:(g + 1) * size] for g in range(groups)], axis=1)  # (R, G, K)
        a = np.einsum("rgki,rki->rgk", vh.reshape(len(vr), groups, groups, size), vr).astype(np.float64)
        b = np.einsum("rgk,rk->rg", vh, weight[r0:r0 + rows]).astype(np.float64)
        a[:, np.arange(groups), np.arange(groups)] += 1e-9 * np.abs(a).max() + 1e-30  # all-zero groups
        s = np.linalg.solve(a, b[..., None])[..., 0]
        good = np.isfinite(s) & (s > 0)
        out[r0:r0 + rows][good] = s[good].astype(np.float16)
    return out
