"""The tokenizer of a checkpoint: ``tokenizer.json`` through the ``tokenizers`` library.

Besides encode/decode it renders the checkpoint's chat template (chat_template.py)
as Hugging Face's ``apply_chat_template`` does, with the special tokens (``bos_token``,
``eos_token``, ...) as variables and ``add_generation_prompt``, under limits sized to the
model's context (template_limits.py: the context's tokens x the longest token). The rendered text is
encoded without adding special tokens, because the template already writes the BOS
where the model wants it. ``stream_decoder()`` gives the incremental detokenizer
(detokenizer.py) used for streaming.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from ...errors import CheckpointError, InputError
from .chat_template import ChatTemplate, template_source
from .detokenizer import StreamDecoder
from .template_limits import RenderLimits

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")  # passed to templates when set


class Tokenizer:
    """encode/decode for one checkpoint, its special tokens and its chat template."""

    def __init__(self, directory: str | Path, context: int | None = None):
        """Read ``directory``'s tokenizer; ``context``: the model's context in tokens, which bounds what its
        chat template may render (None: RenderLimits' default)."""
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
        tokens = {name: _token_text(self.config.get(name)) for name in SPECIAL_TOKENS}
        self.special_tokens = {name: text for name, text in tokens.items() if text is not None}
        self.special_ids = frozenset(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)
        # SentencePiece-style byte-fallback tokens <0x00>..<0xFF> (none in byte-level vocabularies)
        self.byte_fallback_ids = frozenset(i for i in (self.token_to_id(f"<0x{b:02X}>") for b in range(256))
                                           if i is not None)
        source, origin = template_source(directory, self.config)
        self.has_chat_template = source is not None
        longest = max(map(len, self._tok.get_vocab(with_added_tokens=True)), default=1)
        limits = RenderLimits() if context is None else RenderLimits.for_context(context, longest)
        self.chat_template = ChatTemplate(source, origin, limits)

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added (special) tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> token ids; special tokens (BOS) added as the tokenizer's post-processor says."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Token ids -> text."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of one token string, or None if the vocabulary lacks it."""
        return self._tok.token_to_id(token)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The id of tokenizer_config's eos_token (empty if it has none): a stop token."""
        eos = self.special_tokens.get("eos_token")
        token_id = self.token_to_id(eos) if eos is not None else None
        return frozenset() if token_id is None else frozenset([token_id])

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tools=None, documents=None) -> str:
        """Render ``messages`` ({role, content} dicts) with the checkpoint's chat template, as HF does.

        ``tools`` (JSON-schema function descriptions) and ``documents`` are passed to the template
        as HF passes them. A template that refuses the conversation (its ``raise_exception``, say
        roles that do not alternate) raises TemplateInputError, an InputError; one that breaks
        its limits or sandbox, TemplateCheckpointError (chat_template.py).
        """
        try:
            messages = [dict(m) for m in messages]
        except (TypeError, ValueError):
            raise InputError("messages: expected a list of {role, content} objects") from None
        return self.chat_template.render(messages=messages, tools=tools, documents=documents,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens)

    def encode_chat(self, messages) -> list[int]:
        """Messages -> prompt ids: the rendered template, encoded without adding a second BOS (as HF does)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=True), add_special_tokens=False)

    def encode_raw(self, text: str) -> list[int]:
        """A raw prompt -> ids with the tokenizer's special tokens, unless the text already starts with the BOS."""
        ids = self.encode(text)
        bos = self.special_tokens.get("bos_token")
        bos_id = self.token_to_id(bos) if bos is not None else None
        if bos_id is not None and ids[:2] == [bos_id, bos_id]:
            return ids[1:]
        return ids

    def stream_decoder(self) -> "StreamDecoder":
        """A fresh incremental detokenizer for one generated sequence."""
        return StreamDecoder(self)


def _token_text(value) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with 'content'."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
