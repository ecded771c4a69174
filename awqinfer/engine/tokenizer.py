"""The tokenizer of a checkpoint: ``tokenizer.json`` through the ``tokenizers`` library."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from ..errors import CheckpointError


class Tokenizer:
    """encode/decode for one checkpoint, plus its special tokens from tokenizer_config.json."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{directory}: no tokenizer.json (a fast Hugging Face tokenizer is required)")
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a plain Exception
            raise CheckpointError(f"{path}: cannot be read by the tokenizers library ({e})") from None
        cfg_path = directory / "tokenizer_config.json"
        try:
            self.config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        except ValueError as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> token ids; special tokens (BOS) added as the tokenizer's post-processor says."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Token ids -> text."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)
