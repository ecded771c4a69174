"""The shared-memory tiling of every prefill GEMM (AWQ, int8, dense): Y (T, N) = X (T, K) W^T.

A block of (TILE_N, TILE_T // TOKENS_PER_THREAD) = (64, 4) threads computes a tile of
TILE_T tokens x TILE_N outputs. It walks K in steps of TILE_K: the block stages the
X tile and the W tile in shared memory (the weight format's kernel widens its tile to
f32 once, as it is read), then every thread accumulates TOKENS_PER_THREAD outputs of
one column. Each packed weight is read once per block; partial tiles (T, N or K not a
multiple of the tile) are padded with zeros on load and skipped on store.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .launch import cdiv

TILE_N = 64  # outputs per block (threadIdx.x)
TILE_T = 32  # tokens per block
TILE_K = 32  # inputs per step (4 packed AWQ words)
TOKENS_PER_THREAD = 8  # tokens ty, ty + 4, ..., each thread's column of the tile
THREADS_Y = TILE_T // TOKENS_PER_THREAD
THREADS = TILE_N * THREADS_Y  # 256
W_TILE = (TILE_K, TILE_N + 1)  # w_tile[k, n] = W[n0 + n, k0 + k] as f32; +1 column spreads banks
X_TILE = (TILE_T, TILE_K)  # x_tile[t, k] = X[t0 + t, k0 + k]


def gemm_launch(n_tokens: int, n_out: int):
    """(grid, block) for a GEMM with these T and N."""
    return (cdiv(n_out, TILE_N), cdiv(n_tokens, TILE_T)), (TILE_N, THREADS_Y)


@cuda.jit(device=True)
def load_x_tile(x, x_tile, t0, k0, tid):
    """x_tile = X[t0 : t0 + TILE_T, k0 : k0 + TILE_K], zeros outside X; 4 loads per thread, coalesced."""
    n_tokens, k = x.shape
    for e in range(TILE_T * TILE_K // THREADS):
        idx = e * THREADS + tid
        tt = idx // TILE_K
        kk = idx % TILE_K
        v = np.float32(0.0)
        if t0 + tt < n_tokens and k0 + kk < k:
            v = x[t0 + tt, k0 + kk]
        x_tile[tt, kk] = v


@cuda.jit(device=True)
def multiply_tiles(x_tile, w_tile, acc, tx, ty):
    """acc[r] += x_tile[ty + r * THREADS_Y, :] . w_tile[:, tx] for this thread's tokens r."""
    for kk in range(TILE_K):
        w = w_tile[kk, tx]
        for r in range(TOKENS_PER_THREAD):
            acc[r] += x_tile[ty + r * THREADS_Y, kk] * w


@cuda.jit(device=True)
def store_tile(acc, out, t0, n0, tx, ty, scale):
    """out[t, n] = acc[r] * scale for this thread's column n = n0 + tx and tokens t inside out."""
    n_tokens, n_out = out.shape
    n = n0 + tx
    if n < n_out:
        for r in range(TOKENS_PER_THREAD):
            t = t0 + ty + r * THREADS_Y
            if t < n_tokens:
                out[t, n] = acc[r] * scale
