"""Streaming detokenization: generated token ids in, text chunks out, never a broken character."""

from __future__ import annotations


class StreamDecoder:
    """Token ids in, text chunks out, such that the chunks join to ``decode(all ids)``.

    Each step decodes the whole sequence so far and emits what is new, except while
    the text ends in U+FFFD: then a multi-byte character is still incomplete (a byte
    fallback token, or a byte-level token holding part of a character) and is held
    back until it completes. Text is also held while the last token (skipped special
    tokens and ids past the vocabulary aside) is a byte-fallback token <0xNN>: tokenizers
    decodes a run of them as one byte string (tokens that decode to nothing in between do
    not end it), and if a later
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

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._sent = 0  # characters of the decoded text already emitted

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes ('' while a character is incomplete)."""
        self._ids.append(int(token_id))
        tok = self._tokenizer
        size = tok.vocab_size  # ids past the tokenizer's vocabulary (a model's padded rows) decode to nothing
        last = next((i for i in reversed(self._ids) if i not in tok.special_ids and i < size), None)
        if last in tok.byte_fallback_ids:
            return ""  # a byte run is open (skipped special tokens and unknown ids do not close it)
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
