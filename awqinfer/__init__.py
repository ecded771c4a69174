"""awqinfer: a readable LLM inference engine for AWQ 4-bit checkpoints, in Python and Numba."""

from .engine.llm import LLM, load, run
from .engine.quant.quantize import quantize
from .errors import (AwqinferError, Cancelled, CheckpointError, DeviceError, InputError, ModelNotFoundError,
                     TemplateCheckpointError, TemplateError, TemplateInputError)

__all__ = ["load", "run", "quantize", "LLM", "AwqinferError", "Cancelled", "CheckpointError", "DeviceError",
           "InputError", "ModelNotFoundError", "TemplateError", "TemplateInputError", "TemplateCheckpointError"]
__version__ = "0.1.0"
