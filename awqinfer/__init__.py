"""awqinfer: a readable LLM inference engine for AWQ 4-bit checkpoints, in Python and Numba."""

from .engine.llm import LLM, kv_cache_usage, load, run, set_kv_budget
from .engine.quant.quantize import quantize
from .errors import (AwqinferError, Cancelled, CheckpointError, DeviceError, InputError, ModelNotFoundError,
                     QueueFull, TemplateCheckpointError, TemplateError, TemplateInputError)

__all__ = ["load", "run", "quantize", "LLM", "kv_cache_usage", "set_kv_budget", "AwqinferError", "Cancelled",
           "CheckpointError", "DeviceError", "InputError", "ModelNotFoundError", "QueueFull", "TemplateError",
           "TemplateInputError", "TemplateCheckpointError"]
__version__ = "0.1.0"
