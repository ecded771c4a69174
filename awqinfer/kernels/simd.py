"""256-bit integer SIMD as Numba values: what the integer-dot kernels (kernels/qdot.py) are written in.

Why this exists. A 4-bit GEMV on one core is bound by unpacking arithmetic, not memory
(docs/PERFORMANCE.md, 4-bit GEMV item 6). The remedy llama.cpp uses is an integer dot
product: activations quantized to int8, weights multiplied as bytes. LLVM never emits
x86's byte multiply-add ``vpmaddubsw`` from plain loops (its saturation has no plain
equivalent), so these few operations are written as LLVM IR through
``numba.extending.intrinsic``, still pure Python, compiled with the calling kernel:

    load_bytes(a, offset) -> U8x32      32 bytes of any C-contiguous array, from a byte offset
    nibbles(v) -> (lo, hi)              each byte's low and high 4 bits, as bytes 0..15
    madd_u8s8(u, s) -> I16x16           vpmaddubsw: u8 x s8, adjacent pairs summed (saturating)
    dot_u8s8(acc, u, s) -> I32x8        vpdpbusd (VNNI only): acc + u8 x s8, groups of 4 summed to i32
    x128_add_i32(a, b), zeros_i32x8()   128 a + b lane-wise; eight i32 zeros
    add_i16(a, b), add_i32(a, b)        lane-wise sums
    load_i32x8(a, offset) -> I32x8      8 int32 of any C-contiguous array, from a byte offset
    halves_i32(a, b) -> I32x8           a in lanes 0-3, b in lanes 4-7 (one per half block)
    mul_i32(a, b)                       lane-wise i32 product
    madd_pairs(v) -> I32x8              vpmaddwd with ones: adjacent i16 pairs summed to i32
    madd_pairs_x128(v) -> I32x8         the same times 128 (vpmaddwd with 128s)
    hadd_i32(a, b) -> I32x8             vphaddd: adjacent pairs of a, then of b, within each 128-bit half
    lanes_of(kind, count, pattern)      makes loaders (arr, index) -> 8 lanes picked by a constant
                                        pattern from ``count`` f32 (or negated u8, as i32) of an array
    f32x8(8 scalars) / i32x8(8 scalars) eight lanes from scalars
    mul_f32(a, b), scale_add_lanes(acc, d, s)  lane-wise product; acc + float(d) * s
    abs_i8(v), sign_i8(v, s)            |v| and v * sign(s) (llama.cpp's s8 x s8 trick)
    scale_add(acc, d, s0, s1) -> F32x8  acc + float(d) * s, s = s0 in lanes 0-3, s1 in lanes 4-7
    zeros_f32x8(), hsum(v)               eight f32 zeros; the sum of an F32x8's lanes
    half_to_f32(bits)                   IEEE half (as uint16) -> f32, exact (F16C's vcvtph2ps, or
                                        integer operations where F16C is missing)
    f32_to_half(x)                      f32 -> IEEE half bits (uint16), round to nearest even
                                        (vcvtps2ph; LLVM's own lowering elsewhere)

Each is valid only where ``AVX2`` is True (x86-64 with AVX2, FMA and F16C: every x86 server
since 2013), ``dot_u8s8`` only where ``VNNI`` is also True (AVX-VNNI, or AVX512-VNNI with VL:
Ice Lake, Zen 4 and later); kernels/qdot.py picks a plain-loop twin, or the AVX2 one, otherwise.
No bounds are checked: the caller guarantees that ``offset + 32`` bytes (for ``lanes_of``'s
loaders, ``count`` elements from ``index``) lie inside the array.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, models, register_model

_FEATURES = llvm.get_host_cpu_features()
AVX2 = all(_FEATURES.get(f, False) for f in ("avx2", "fma", "f16c"))
VNNI = bool(_FEATURES.get("avxvnni") or (_FEATURES.get("avx512vnni") and _FEATURES.get("avx512vl")))


class Vec(types.Type):
    """A 256-bit vector value: ``lanes`` lanes of ``kind`` ('i' or 'f') with ``bits`` bits each."""

    def __init__(self, lanes: int, bits: int, kind: str):
        self.lanes, self.bits, self.kind = lanes, bits, kind
        super().__init__(name=f"Vec{lanes}x{kind}{bits}")

    def llvm(self) -> ir.VectorType:
        return ir.VectorType(ir.FloatType() if self.kind == "f" else ir.IntType(self.bits), self.lanes)


U8x32 = Vec(32, 8, "i")  # unsigned or signed by use, as in the hardware
I16x16 = Vec(16, 16, "i")
I32x8 = Vec(8, 32, "i")
F32x8 = Vec(8, 32, "f")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.llvm())


def _x86(builder, name: str, ret: Vec, args: list, arg_types: list):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret.llvm(), [t.llvm() for t in arg_types]),
                                        name)
    return builder.call(fn, args)


def _splat(builder, value, vec_type: ir.VectorType):
    one = builder.insert_element(ir.Constant(vec_type, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vec_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vec_type.count), [0] * vec_type.count))


def _halves(builder, a, b, vec_type: ir.VectorType):
    """An 8-lane vector of scalar a in lanes 0-3 and b in lanes 4-7."""
    return builder.shuffle_vector(_splat(builder, a, vec_type), _splat(builder, b, vec_type),
                                  ir.Constant(ir.VectorType(ir.IntType(32), 8), [0, 1, 2, 3, 12, 13, 14, 15]))


def _byte_pointer(context, builder, arr_type, arr, offset):
    """i8* to byte ``offset`` of a contiguous array's data."""
    data = context.make_array(arr_type)(context, builder, arr).data
    return builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [offset])


def _check_contiguous(arr):
    if not isinstance(arr, types.Array) or arr.layout != "C":
        raise TypingError(f"expected a C-contiguous array, got {arr}")


def _load(vec: "Vec", align: int):
    """An intrinsic loading one ``vec`` from any C-contiguous array at a byte offset."""
    @intrinsic
    def load(typingctx, arr, offset):
        _check_contiguous(arr)

        def codegen(context, builder, sig, args):
            p = _byte_pointer(context, builder, sig.args[0], args[0], args[1])
            return builder.load(builder.bitcast(p, vec.llvm().as_pointer()), align=align)
        return vec(arr, offset), codegen
    return load


load_bytes = _load(U8x32, 1)  # the 32 bytes of an array from a byte offset
load_i32x8 = _load(I32x8, 4)  # the 8 int32 of an array from a byte offset (4-aligned)


@intrinsic
def nibbles(typingctx, v):
    """(low 4 bits, high 4 bits) of each byte of v, as two U8x32 of values 0..15."""
    def codegen(context, builder, sig, args):
        t = U8x32.llvm()
        mask = ir.Constant(t, [15] * 32)
        lo = builder.and_(args[0], mask)
        hi = builder.and_(builder.lshr(args[0], ir.Constant(t, [4] * 32)), mask)
        return context.make_tuple(builder, sig.return_type, [lo, hi])
    return types.UniTuple(U8x32, 2)(v), codegen


@intrinsic
def madd_u8s8(typingctx, u, s):
    """vpmaddubsw: lane i = u[2i]*s[2i] + u[2i+1]*s[2i+1], u unsigned, s signed, saturated to i16."""
    def codegen(context, builder, sig, args):
        return _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", I16x16, list(args), [U8x32, U8x32])
    return I16x16(u, s), codegen


@intrinsic
def dot_u8s8(typingctx, acc, u, s):
    """vpdpbusd (VNNI): lane i = acc[i] + u[4i..4i+3] . s[4i..4i+3], u unsigned, s signed, summed in i32.

    One instruction for what ``madd_pairs(madd_u8s8(u, s))`` does in two (and an add), with no i16
    saturation on the way; the sums are the same wherever that pair does not saturate. Only where
    ``VNNI`` is True.
    """
    if acc != I32x8 or u != U8x32 or s != U8x32:
        raise TypingError(f"expected I32x8, U8x32, U8x32, got {acc}, {u}, {s}")

    def codegen(context, builder, sig, args):
        words = I32x8.llvm()
        return _x86(builder, "llvm.x86.avx512.vpdpbusd.256", I32x8,
                    [args[0], builder.bitcast(args[1], words), builder.bitcast(args[2], words)], [I32x8] * 3)
    return I32x8(acc, u, s), codegen


@intrinsic
def x128_add_i32(typingctx, a, b):
    """128 a + b, lane-wise i32 (callers keep it in range)."""
    if a != I32x8 or b != I32x8:
        raise TypingError(f"expected two I32x8, got {a}, {b}")

    def codegen(context, builder, sig, args):
        return builder.add(builder.shl(args[0], ir.Constant(I32x8.llvm(), [7] * 8)), args[1])
    return I32x8(a, b), codegen


@intrinsic
def zeros_i32x8(typingctx):
    """Eight i32 zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(I32x8.llvm(), [0] * 8)
    return I32x8(), codegen


def _madd_by(k: int):
    @intrinsic
    def madd(typingctx, v):
        def codegen(context, builder, sig, args):
            factor = ir.Constant(I16x16.llvm(), [k] * 16)
            return _x86(builder, "llvm.x86.avx2.pmadd.wd", I32x8, [args[0], factor], [I16x16, I16x16])
        return I32x8(v), codegen
    return madd


madd_pairs = _madd_by(1)  # vpmaddwd with ones: lane i = v[2i] + v[2i+1] as i32
madd_pairs_x128 = _madd_by(128)  # the same times 128, in the same one instruction


def _lanewise(op: str, vec: Vec):
    @intrinsic
    def fn(typingctx, a, b):
        if a != vec or b != vec:
            raise TypingError(f"expected two {vec}, got {a}, {b}")

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])
        return vec(a, b), codegen
    return fn


add_i16 = _lanewise("add", I16x16)  # lane-wise i16 sum (callers keep it from overflowing)
add_i32 = _lanewise("add", I32x8)  # lane-wise i32 sum
mul_i32 = _lanewise("mul", I32x8)  # lane-wise i32 product (low 32 bits; callers keep it in range)
mul_f32 = _lanewise("fmul", F32x8)  # lane-wise f32 product


@intrinsic
def halves_i32(typingctx, a, b):
    """An I32x8 of a (int32) in lanes 0-3 and b in lanes 4-7: one value for each half of a 64-input block."""
    if a != types.int32 or b != types.int32:
        raise TypingError(f"expected two int32, got {a}, {b}")

    def codegen(context, builder, sig, args):
        return _halves(builder, args[0], args[1], I32x8.llvm())
    return I32x8(a, b), codegen


@intrinsic
def hadd_i32(typingctx, a, b):
    """vphaddd: (a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7).

    Applied twice to four chunks' dot products d0..d3 (lanes 0-3: a 64-input block's inputs 0-31,
    lanes 4-7: inputs 32-63), ``hadd_i32(hadd_i32(d0, d1), hadd_i32(d2, d3))`` holds each block's
    first-half sum in lanes 0-3 and its second-half sum in lanes 4-7, in block order.
    """
    def codegen(context, builder, sig, args):
        return _x86(builder, "llvm.x86.avx2.phadd.d", I32x8, list(args), [I32x8, I32x8])
    return I32x8(a, b), codegen


def lanes_of(kind: str, count: int, pattern: tuple):
    """An intrinsic (arr, index) -> 8 lanes: ``count`` elements of arr from element ``index``, lane i = element
    pattern[i]; kind "f": f32 elements as F32x8, "z": u8 elements negated as I32x8 (zero points, -z)."""
    elem, vec = (ir.FloatType(), F32x8) if kind == "f" else (ir.IntType(8), I32x8)
    size = 4 if kind == "f" else 1
    picks = ir.Constant(ir.VectorType(ir.IntType(32), 8), list(pattern))

    @intrinsic
    def lanes(typingctx, arr, index):
        _check_contiguous(arr)
        if arr.dtype != (types.float32 if kind == "f" else types.uint8):
            raise TypingError(f"expected a {'float32' if kind == 'f' else 'uint8'} array, got {arr}")

        def codegen(context, builder, sig, args):
            offset = builder.mul(args[1], ir.Constant(args[1].type, size))
            p = _byte_pointer(context, builder, sig.args[0], args[0], offset)
            few = builder.load(builder.bitcast(p, ir.VectorType(elem, count).as_pointer()), align=size)
            if kind == "z":
                wide = builder.zext(few, ir.VectorType(ir.IntType(32), count))
                few = builder.sub(ir.Constant(wide.type, [0] * count), wide)
            return builder.shuffle_vector(few, few, picks)
        return vec(arr, index), codegen
    return lanes


def _from_scalars(vec: "Vec", scalar):
    @intrinsic
    def build(typingctx, a0, a1, a2, a3, a4, a5, a6, a7):
        if any(a != scalar for a in (a0, a1, a2, a3, a4, a5, a6, a7)):
            raise TypingError(f"expected eight {scalar}")

        def codegen(context, builder, sig, args):
            v = ir.Constant(vec.llvm(), ir.Undefined)
            for i, a in enumerate(args):
                v = builder.insert_element(v, a, ir.Constant(ir.IntType(32), i))
            return v
        return vec(*([scalar] * 8)), codegen
    return build


f32x8 = _from_scalars(F32x8, types.float32)  # eight f32 scalars -> F32x8
i32x8 = _from_scalars(I32x8, types.int32)  # eight int32 scalars -> I32x8


@intrinsic
def abs_i8(typingctx, v):
    """|v| per signed byte (the bytes of int8 weights in -127..127, so the result fits u8)."""
    def codegen(context, builder, sig, args):
        t = U8x32.llvm()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, ir.IntType(1)]), "llvm.abs.v32i8")
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])
    return U8x32(v), codegen


@intrinsic
def sign_i8(typingctx, v, s):
    """vpsignb: v * sign(s) per signed byte (0 where s is 0)."""
    def codegen(context, builder, sig, args):
        return _x86(builder, "llvm.x86.avx2.psign.b", U8x32, list(args), [U8x32, U8x32])
    return U8x32(v, s), codegen


@intrinsic
def scale_add(typingctx, acc, d, s_low, s_high):
    """acc + float(d) * (s_low in lanes 0-3, s_high in lanes 4-7): acc F32x8, d I32x8, two f32 scalars.

    After ``madd_pairs`` of one 64-input block, lanes 0-3 hold inputs 0-31 and lanes 4-7 inputs
    32-63: two scales serve weight groups of 32.
    """
    def codegen(context, builder, sig, args):
        return _scaled_sum(builder, args[0], args[1], _halves(builder, args[2], args[3], F32x8.llvm()))
    return F32x8(acc, d, types.float32, types.float32), codegen


@intrinsic
def scale_add_lanes(typingctx, acc, d, s):
    """acc + float(d) * s, lane by lane: acc F32x8, d I32x8, s F32x8."""
    def codegen(context, builder, sig, args):
        return _scaled_sum(builder, *args)
    return F32x8(acc, d, s), codegen


def _scaled_sum(builder, acc, d, s):
    """acc + float(d) * s in LLVM IR (F32x8, I32x8, F32x8)."""
    return builder.fadd(acc, builder.fmul(builder.sitofp(d, F32x8.llvm()), s))


@intrinsic
def zeros_f32x8(typingctx):
    """Eight f32 zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(F32x8.llvm(), [0.0] * 8)
    return F32x8(), codegen


@intrinsic
def hsum(typingctx, v):
    """The sum of the eight lanes of an F32x8."""
    def codegen(context, builder, sig, args):
        total = builder.extract_element(args[0], ir.Constant(ir.IntType(32), 0))
        for i in range(1, 8):
            total = builder.fadd(total, builder.extract_element(args[0], ir.Constant(ir.IntType(32), i)))
        return total
    return types.float32(v), codegen


@intrinsic
def _half_to_f32_f16c(typingctx, bits):
    """An IEEE half given by its 16 bits (uint16) as f32, exact: one vcvtph2ps where F16C exists."""
    def codegen(context, builder, sig, args):
        half = builder.bitcast(builder.trunc(args[0], ir.IntType(16)), ir.HalfType())
        return builder.fpext(half, ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def f32_to_half(typingctx, value):
    """An f32 as the 16 bits (uint16) of the nearest IEEE half (ties to even), as numpy's astype(float16)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def f32_from_bits(typingctx, bits):
    """The f32 whose 32 bits are ``bits`` (a uint32): a bit cast, any CPU."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())
    return types.float32(bits), codegen


@njit(inline="always")
def _half_to_f32_plain(bits):
    """The same as _half_to_f32_f16c from integer operations (CPUs without F16C)."""
    h = np.uint32(bits)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exponent = (h >> np.uint32(10)) & np.uint32(31)
    mantissa = h & np.uint32(0x3FF)
    if exponent == 0:  # zero or subnormal: mantissa * 2^-24
        magnitude = np.float32(mantissa) * np.float32(2.0**-24)
        return -magnitude if sign else magnitude
    if exponent == 31:  # inf, nan
        return f32_from_bits(sign | np.uint32(0x7F800000) | (mantissa << np.uint32(13)))
    return f32_from_bits(sign | ((exponent + np.uint32(112)) << np.uint32(23)) | (mantissa << np.uint32(13)))


half_to_f32 = _half_to_f32_f16c if AVX2 else _half_to_f32_plain  # uint16 bits -> f32, exact
