"""The tokenizer of a checkpoint: ``tokenizer.json`` through the ``tokenizers`` library.

Besides encode/decode it holds the two pieces of text handling around generation:

* the chat template of ``tokenizer_config.json`` (or ``chat_template.jinja``),
  rendered as Hugging Face's ``apply_chat_template`` renders it: jinja2's
  ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the special
  tokens (``bos_token``, ``eos_token``, ...) as variables, ``add_generation_prompt``,
  and ``raise_exception``. The rendered text is encoded without adding special
  tokens, because the template already writes the BOS where the model wants it.
  A checkpoint without a template gets PLAIN_CHAT_TEMPLATE.
* StreamDecoder, the incremental detokenizer used for streaming.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _HFTokenizer

from ..errors import CheckpointError, InputError

# The fallback for checkpoints that ship no chat template: one "role: content" line per
# message after the BOS, then "assistant:" for the model to continue. Plain text, so a
# base model reads it as a dialogue transcript.
PLAIN_CHAT_TEMPLATE = (
    "{% if bos_token is defined %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")  # passed to templates when set


class Tokenizer:
    """encode/decode for one checkpoint, its special tokens and its chat template."""

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
        tokens = {name: _token_text(self.config.get(name)) for name in SPECIAL_TOKENS}
        self.special_tokens = {name: text for name, text in tokens.items() if text is not None}
        self.special_ids = frozenset(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)
        # SentencePiece-style byte-fallback tokens <0x00>..<0xFF> (none in byte-level vocabularies)
        self.byte_fallback_ids = frozenset(i for i in (self.token_to_id(f"<0x{b:02X}>") for b in range(256))
                                           if i is not None)
        source, origin = _chat_template_source(directory, self.config)
        self.has_chat_template = source is not None
        self._template = _compile_template(source or PLAIN_CHAT_TEMPLATE, origin)

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

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        """Render ``messages`` ({role, content} dicts) with the checkpoint's chat template.

        Template errors caused by the conversation (``raise_exception`` in the template,
        say roles that do not alternate) become an InputError with the template's message.
        """
        try:
            return self._template.render(
                messages=[dict(m) for m in messages], tools=None, documents=None,
                add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except (jinja2.TemplateError, TypeError, ValueError) as e:
            raise InputError(f"messages: the model's chat template rejects this conversation: {e}") from None

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


class StreamDecoder:
    """Token ids in, text chunks out, such that the chunks join to ``decode(all ids)``.

    Each step decodes the whole sequence so far and emits what is new, except while
    the text ends in U+FFFD: then a multi-byte character is still incomplete (a byte
    fallback token, or a byte-level token holding part of a character) and is held
    back until it completes. Text is also held while the last token (skipped special
    tokens aside) is a byte-fallback token <0xNN>: tokenizers decodes a run of them as
    one byte string (special tokens in between do not end it), and if a later
    byte makes the run invalid UTF-8 the whole run turns into U+FFFD, so the run is only
    final once a non-byte token closes it. Decoding the whole sequence, not token by
    token, keeps the spaces that SentencePiece ("▁") and byte-level ("Ġ") tokens carry.
    ``finish`` flushes what is held back at the end: the replacement characters of a
    sequence that really is invalid UTF-8.

    Costs one decode of the output per token, which is small beside a forward pass.
    ``tokenizers.decoders.DecodeStream`` was the first choice, but it raises
    ("Invalid prefix encountered") on invalid byte-fallback sequences, which a
    model may well generate.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._sent = 0  # characters of the decoded text already emitted

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes ('' while a character is incomplete)."""
        self._ids.append(int(token_id))
        tok = self._tokenizer
        if next((i for i in reversed(self._ids) if i not in tok.special_ids), None) in tok.byte_fallback_ids:
            return ""  # a byte run is open (skipped special tokens do not close it)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        return self._take(text)

    def finish(self) -> str:
        """Everything not yet emitted, replacement characters included."""
        return self._take(self._tokenizer.decode(self._ids))

    def _take(self, text: str) -> str:
        new, self._sent = text[self._sent:], len(text)
        return new


def _token_text(value) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with 'content'."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template_source(directory: Path, config: dict) -> tuple[str | None, Path]:
    """The template text and its file: chat_template.jinja if present (newer HF exports), else tokenizer_config's.

    tokenizer_config may hold a list of named templates; the one named 'default' is used.
    """
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), jinja_file
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return (template if isinstance(template, str) and template else None), directory / "tokenizer_config.json"


def _raise_exception(message):
    """The ``raise_exception`` that HF templates call to reject a conversation."""
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """HF's ``tojson``: plain json.dumps, without jinja's HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _compile_template(source: str, origin: Path) -> jinja2.Template:
    """Compile a chat template in the sandbox HF uses, with the globals HF templates expect."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise CheckpointError(f"{origin}: the chat template is not valid jinja ({e})") from None
