"""LLM: a loaded model with its tokenizer, the object ``awqinfer.load`` returns."""

from __future__ import annotations

from pathlib import Path

from .model import Model
from .tokenizer import Tokenizer


class LLM:
    """A model and its tokenizer, loaded once, used for many ``run`` calls."""

    def __init__(self, model: Model, tokenizer: Tokenizer, name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_directory(cls, directory: str | Path, name: str = "", device: str = "cpu") -> "LLM":
        """Load a Hugging Face checkpoint directory (config, safetensors, tokenizer) onto ``device``."""
        return cls(Model.load(directory, device), Tokenizer(directory), name or str(directory))
