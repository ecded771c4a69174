"""Which Backend a device name means: 'cpu' always, 'cuda' when numba-cuda, a driver and a GPU are here."""

from __future__ import annotations

import importlib.util

from ...errors import DeviceError, InputError
from .backend import CPU, Backend


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
        try:
            from .cuda import cuda_backend  # imported only when asked for
        except Exception as e:  # numba-cuda present but broken (e.g. a mismatched cuda-bindings)
            raise DeviceError(f"device='cuda': numba-cuda is installed but failed to import: "
                              f"{type(e).__name__}: {e}") from e
        return cuda_backend()
    raise InputError(f"device must be 'cpu' or 'cuda', got {device!r}")
