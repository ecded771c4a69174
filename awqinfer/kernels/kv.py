"""KV cache elements in float16 or float32: how kernels read and write them.

Numba has no CPU float16 type, so a float16 cache is a uint16 array of IEEE half bits.
``kv_read(x)`` widens one stored element to f32 and ``kv_write(cache, value)`` gives the
element to store for an f32 value (round to nearest even), each compiled for the cache's
dtype: for a float32 cache both are the identity, so the same attention code serves both.
The conversions are kernels/simd.py's ``half_to_f32`` and ``f32_to_half``, which x86 CPUs
with F16C (every AVX2 one) run as single instructions (vcvtph2ps / vcvtps2ph).
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from .simd import f32_to_half, half_to_f32


def kv_read(x):
    """One stored cache element as f32."""


@overload(kv_read, inline="always")
def _kv_read(x):
    if x == types.uint16:
        return lambda x: half_to_f32(x)
    if x == types.float32:
        return lambda x: x
    return None


def kv_write(cache, value):
    """The element to store in ``cache`` (an array) for the f32 ``value``."""


@overload(kv_write, inline="always")
def _kv_write(cache, value):
    if cache.dtype == types.uint16:
        return lambda cache, value: f32_to_half(np.float32(value))
    if cache.dtype == types.float32:
        return lambda cache, value: np.float32(value)
    return None
