"""KV cache elements in float16 or float32: how kernels read and write them.

Numba has no CPU float16 type, so a float16 cache is a uint16 array of IEEE half bits.
``kv_read(x)`` widens one stored element to f32 and ``kv_write(cache, value)`` gives the
element to store for an f32 value (round to nearest even), each compiled for the cache's
dtype: for a float32 cache both are the identity, so the same attention code serves both.
The conversions are LLVM's own ``fpext``/``fptrunc`` through half, which x86 CPUs with
F16C (every AVX2 one) run as single instructions (vcvtph2ps / vcvtps2ph).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def f16_bits_to_f32(typingctx, bits):
    """uint16 half bits -> f32, exactly."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16_bits(typingctx, value):
    """f32 -> uint16 half bits, rounded to nearest even (as numpy's astype(float16))."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


def kv_read(x):
    """One stored cache element as f32."""


@overload(kv_read, inline="always")
def _kv_read(x):
    if x == types.uint16:
        return lambda x: f16_bits_to_f32(x)
    if x == types.float32:
        return lambda x: x
    return None


def kv_write(cache, value):
    """The element to store in ``cache`` (an array) for the f32 ``value``."""


@overload(kv_write, inline="always")
def _kv_write(cache, value):
    if cache.dtype == types.uint16:
        return lambda cache, value: f32_to_f16_bits(np.float32(value))
    if cache.dtype == types.float32:
        return lambda cache, value: np.float32(value)
    return None
