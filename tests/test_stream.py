"""The streaming detokenizer: chunks join to the full decode, hold back half characters, keep spaces.

Token ids come from encoding tricky text with the tiny tokenizers: the Llama one
(SentencePiece-style, byte fallback: an emoji is four <0x..> tokens) and the Qwen
one (byte-level: a CJK character may straddle two tokens). Random id sequences,
invalid UTF-8 included, check the join invariant for anything a model may emit.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from awqinfer.engine.text.tokenizer import Tokenizer

TEXTS = [
    "Hello, world! 😀 日本語のテスト",
    " leading space, two  spaces, and a tab\tend",
    "ñandú café 🍕🍕 naïve — “quotes”",
    "def f(x):\n    return x  # 中文注释\n\n",
    "👩‍👩‍👧 family, 🇯🇵 flag",
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tok(request, tiny_llama, tiny_qwen2):
    return Tokenizer(tiny_llama if request.param == "llama" else tiny_qwen2)


def stream(tok, ids):
    decoder = tok.stream_decoder()
    chunks = [decoder.add(i) for i in ids]
    return chunks, decoder.finish()


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_is_intact(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    chunks, rest = stream(tok, ids)
    assert "".join(chunks) + rest == tok.decode(ids) == text
    assert not any("\ufffd" in c for c in [*chunks, rest])  # never half a character


def test_multibyte_characters_are_held_back_then_emitted_whole(tok):
    ids = tok.encode("a😀b", add_special_tokens=False)
    chunks, _ = stream(tok, ids)
    assert len(ids) > 3 and "" in chunks  # the emoji takes several tokens; the partial ones emit nothing
    assert "😀" in chunks or any(c.startswith("😀") or c.endswith("😀") for c in chunks)


def test_spaces_between_words_survive(tok):
    ids = tok.encode("one two three four", add_special_tokens=False)
    chunks, _ = stream(tok, ids)
    assert "".join(chunks) == "one two three four"
    isolated = "".join(tok.decode([i]) for i in ids)  # the mistake streaming must not make
    if tok.config.get("bos_token"):  # SentencePiece: decoding alone strips each token's leading space
        assert isolated != "one two three four"


def test_special_tokens_are_skipped(tok):
    eos = next(iter(tok.eos_token_ids))
    ids = tok.encode("hi there", add_special_tokens=False)
    chunks, rest = stream(tok, [ids[0], eos, *ids[1:]])
    eos_text = tok.decode([eos], skip_special_tokens=False)
    assert eos_text and eos_text not in "hi there"  # the EOS has a text of its own...
    streamed = "".join(chunks) + rest
    assert eos_text not in streamed  # ...which the stream never shows
    assert streamed == tok.decode([ids[0], eos, *ids[1:]]) == tok.decode(ids)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_id_sequence_joins_to_the_full_decode(tok, data):
    """Any ids a model may emit, ids past the tokenizer's vocabulary too (a model's padded rows)."""
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size + 7), max_size=24))
    chunks, rest = stream(tok, ids)
    assert "".join(chunks) + rest == tok.decode(ids)
    assert not any(c.endswith("\ufffd") for c in chunks)  # only the final flush may end in U+FFFD


def test_an_id_past_the_vocabulary_does_not_close_a_byte_run(tok):
    """<0x33>, an unknown id, <0xAE>: tokenizers decodes the two bytes as one invalid run, so '3' is never final."""
    if not tok.byte_fallback_ids:
        pytest.skip("byte-level tokenizer: no byte-fallback tokens")
    three, high = tok.token_to_id("<0x33>"), tok.token_to_id("<0xAE>")
    ids = [*tok.encode("mp", add_special_tokens=False), three, tok.vocab_size + 3, high]
    chunks, rest = stream(tok, ids)
    assert "".join(chunks) + rest == tok.decode(ids)
    assert "3" not in "".join(chunks)
