"""Model names -> checkpoint directories -> loaded LLMs."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError
from .runner import LLM


def load(model: str | Path, device: str = "cpu") -> LLM:
    """Load ``model`` (a local Hugging Face checkpoint directory) onto ``device`` ('cpu' or 'cuda')."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"model {str(model)!r}: no such directory")
    return LLM.from_directory(path, str(model), device)
