"""awqinfer: a readable LLM inference engine for AWQ 4-bit checkpoints, in Python and Numba."""

from .engine.quantize import quantize
from .engine.registry import load
from .engine.runner import LLM, run
from .errors import AwqinferError, CheckpointError, DeviceError, InputError, ModelNotFoundError

__all__ = ["load", "run", "quantize", "LLM", "AwqinferError", "CheckpointError", "DeviceError", "InputError",
           "ModelNotFoundError"]
__version__ = "0.1.0"
