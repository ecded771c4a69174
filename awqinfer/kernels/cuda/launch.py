"""What every CUDA kernel here shares: block sizes, launch arithmetic, block-wide reductions.

Reductions go through shared memory (a tree of halvings separated by barriers),
not warp shuffles: the same code then runs on a GPU and under numba-cuda's
simulator, which has no shuffles. Every thread of a block must call them.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

BLOCK = 128  # threads of a 1-D block, and the size of the shared scratch of every reduction
WARP = 32  # lanes given to one output row of a GEMV, at most


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive ints: blocks needed to cover a items, b per block."""
    return -(-a // b)


def threads_for(n: int, cap: int = BLOCK, items: int = 1) -> int:
    """Threads for a loop over n strided items: a power of two, at most ``cap``, >= n / items.

    Every thread gets at least ``items`` items when n is small (tiny models get small
    blocks, not idle lanes); real models' rows are long enough to get ``cap``.
    """
    t = 1
    while t * items < n and t < cap:
        t *= 2
    return t


@cuda.jit(device=True)
def sum_segment(buf, first, lane, width):
    """buf[first] = sum of buf[first : first + width]; ``width`` a power of two, lane in 0..width-1.

    Each thread has written its own buf[first + lane]; barriers are block-wide, so
    every thread of the block calls this with the same width.
    """
    stride = width // 2
    while stride > 0:
        cuda.syncthreads()
        if lane < stride:
            buf[first + lane] += buf[first + lane + stride]
        stride //= 2
    cuda.syncthreads()


@cuda.jit(device=True)
def max_segment(buf, first, lane, width):
    """buf[first] = max of buf[first : first + width]; the same contract as ``sum_segment``."""
    stride = width // 2
    while stride > 0:
        cuda.syncthreads()
        if lane < stride:
            buf[first + lane] = max(buf[first + lane], buf[first + lane + stride])
        stride //= 2
    cuda.syncthreads()


def as_f32(value) -> np.float32:
    """A Python float argument as f32, so a kernel is compiled once for f32 scalars."""
    return np.float32(value)


@cuda.jit(device=True)
def store_row_sum(acc, out, n, n_out):
    """out[n] = the sum of ``acc`` over the lanes (threadIdx.x) of this thread's row (threadIdx.y).

    The GEMVs' ending: a block is (lanes, rows), each row of lanes has summed part of one
    output's dot product; rows past n_out still take part in the barriers, they only skip the store.
    """
    lanes = cuda.blockDim.x
    lane = cuda.threadIdx.x
    first = cuda.threadIdx.y * lanes
    partial = cuda.shared.array(BLOCK, np.float32)
    partial[first + lane] = acc
    sum_segment(partial, first, lane, lanes)
    if lane == 0 and n < n_out:
        out[n] = partial[first]


def gemv_launch(n_out: int, n_items: int, items_per_lane: int):
    """(grid, block) of a GEMV whose rows each stride over ``n_items`` (packed words or inputs).

    One row of ``lanes`` threads (up to a warp) per output, BLOCK // lanes outputs per
    block; consecutive lanes read consecutive items of the row (coalesced).
    """
    lanes = threads_for(n_items, WARP, items_per_lane)
    rows = BLOCK // lanes
    return (cdiv(n_out, rows),), (lanes, rows)
