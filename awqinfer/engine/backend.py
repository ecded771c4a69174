"""Backend selection, in one place: which kernels run the forward pass, and where arrays live.

The forward pass (model.py) calls only what a Backend holds, so the same
readable code runs on the CPU (Numba) or, through a twin set of kernels with
the same signatures, on an NVIDIA GPU (numba-cuda; see kernels/cuda/).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import DeviceError, InputError
from ..kernels import activations, attention, norm, rope


@dataclass(frozen=True)
class Backend:
    """The kernels of model.py and the array functions around them."""

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


def get_backend(device: str = "cpu") -> Backend:
    """The backend for ``device`` ('cpu' or 'cuda'); an unusable choice is a clear error.

    'cuda' imports numba-cuda only here, when asked for: a CPU run never loads it.
    Raises InputError for an unknown name, DeviceError when 'cuda' cannot run here
    (numba-cuda not installed, no driver or GPU, no CUDA compiler libraries).
    """
    if device == "cpu":
        return CPU
    if device == "cuda":
        if importlib.util.find_spec("numba_cuda") is None:
            raise DeviceError(
                "device='cuda' needs the optional numba-cuda package, which is not installed: "
                "pip install 'awqinfer[cuda]' (on a GPU machine also 'numba-cuda[cu12]' or '[cu13]' "
                "to match the driver's CUDA version)"
            )
        from ..kernels.cuda import cuda_backend  # imported only when asked for

        return cuda_backend()
    raise InputError(f"device must be 'cpu' or 'cuda', got {device!r}")
