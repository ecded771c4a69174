"""The Backend: which kernels run the forward pass, and where arrays live (device.py picks one).

The forward pass (forward.py) calls only what a Backend holds, so the same
readable code runs on the CPU (Numba) or, through a twin set of kernels with
the same signatures, on an NVIDIA GPU (numba-cuda; kernels/cuda/, gathered by cuda.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...kernels import activations, attention, norm, rope


@dataclass(frozen=True)
class Backend:
    """The kernels of forward.py and the array functions around them."""

    name: str
    rmsnorm: Callable  # (x (T,H), weight (H,), eps, out (T,H))
    apply_rope: Callable  # (qkv (T,W), cos (T,D/2), sin (T,D/2), n_rotated, head_dim)
    store_kv: Callable  # (qkv, k_cache (KV,S,D), v_cache, start, n_heads)
    attention: Callable  # (qkv, k_cache, v_cache, start, n_heads, out (T, n_heads*D))
    silu_mul: Callable  # (gate_up (T,2I), out (T,I))
    add_: Callable  # (x (T,H), y (T,H)): x += y
    empty: Callable  # shape -> f32 array on the device
    zeros: Callable  # shape -> f32 zeros on the device
    to_device: Callable  # host array -> device array
    to_host: Callable  # device array -> host numpy array
    upload: Callable  # ModelWeights -> ModelWeights whose arrays live on the device


CPU = Backend(
    name="cpu",
    rmsnorm=norm.rmsnorm,
    apply_rope=rope.apply_rope,
    store_kv=attention.store_kv,
    attention=attention.attention,
    silu_mul=activations.silu_mul,
    add_=activations.add_,
    empty=lambda shape: np.empty(shape, np.float32),
    zeros=lambda shape: np.zeros(shape, np.float32),
    to_device=lambda a: a,
    to_host=lambda a: a,
    upload=lambda weights: weights,
)
