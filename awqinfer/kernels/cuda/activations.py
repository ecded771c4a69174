"""Elementwise kernels on the GPU: the SwiGLU gate, the residual add, a bias add, and zeros."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .launch import BLOCK, cdiv


@cuda.jit(fastmath=True)
def _silu_mul(gate_up, out):
    idx = cuda.grid(1)
    width = out.shape[1]
    if idx < out.shape[0] * width:
        t = idx // width
        i = idx % width
        g = gate_up[t, i]
        out[t, i] = g / (np.float32(1.0) + math.exp(-g)) * gate_up[t, width + i]


def silu_mul(gate_up, out):
    """gate_up (T, 2I) f32 = [gate | up]; out (T, I) f32 = silu(gate) * up."""
    _silu_mul[cdiv(out.size, BLOCK), BLOCK](gate_up, out)


@cuda.jit(fastmath=True)
def _add_(x, y):
    idx = cuda.grid(1)
    width = x.shape[1]
    if idx < x.shape[0] * width:
        x[idx // width, idx % width] += y[idx // width, idx % width]


def add_(x, y):
    """x += y in place. x, y (T, H) f32."""
    _add_[cdiv(x.size, BLOCK), BLOCK](x, y)


@cuda.jit(fastmath=True)
def _add_bias_(out, bias):
    idx = cuda.grid(1)
    width = out.shape[1]
    if idx < out.shape[0] * width:
        out[idx // width, idx % width] += bias[idx % width]


def add_bias_(out, bias):
    """out += bias on every row, in place. out (T, N) f32; bias (N,) f32."""
    _add_bias_[cdiv(out.size, BLOCK), BLOCK](out, bias)


@cuda.jit
def _fill(flat, value):
    idx = cuda.grid(1)
    if idx < flat.shape[0]:
        flat[idx] = value


def zeros(shape) -> "cuda.devicearray.DeviceNDArray":
    """A new f32 device array of ``shape`` set to zero on the device (no host buffer, no copy)."""
    out = cuda.device_array(shape, np.float32)
    if out.size:
        flat = out.reshape(out.size)
        _fill[cdiv(out.size, BLOCK), BLOCK](flat, np.float32(0.0))
    return out
