"""Grammar-constrained decoding: before each draw, the tokens a grammar forbids get logit -inf.

JSON mode (``response_format``) and tool calls (tools.py) must give output that parses and
validates whatever the model is; a 135M model will not write valid JSON by itself, so the
grammar decides what may come next and the model only chooses among what is allowed, as
llama.cpp's grammars, vLLM's guided decoding and Workers AI's JSON mode do. The grammar
engine is llguidance (Rust, a numpy interface, no torch): a JSON Schema or a Lark grammar
becomes an ``LLMatcher``, which fills a bitmask of the allowed tokens (one bit per token id)
in tens of microseconds and advances by the token drawn.

    Grammars     one per loaded model: llguidance's view of the tokenizer (built once, from the
                 checkpoint's tokenizer.json, on first use), grammars compiled and checked
    Constraint   one per sequence: its matcher and its bitmask; ``apply(logits)`` masks,
                 ``advance(token)`` moves on and says whether the grammar is complete

The model's stop tokens are the grammar's end of sequence: they are allowed exactly when the
grammar accepts the output as complete. JSON is written with ", " and ": " separators and no
other whitespace (nothing lets a small model loop on blank space).
"""

from __future__ import annotations

import json
import threading

import llguidance
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from ...errors import InputError
from .tokenizer import Tokenizer

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# llguidance's limits on grammar size and per-token work, without the grammar dumped into error messages
LIMITS = llguidance.LLParserLimits(verbose_errors=False)
MAX_ERROR_CHARS = 300


class Grammars:
    """Grammars for one model: its tokenizer as llguidance sees it, its vocabulary and stop tokens."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: frozenset[int]):
        self._tokenizer, self.vocab_size, self.stop_ids = tokenizer, vocab_size, stop_ids
        self._ll: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's tokenizer, built once from tokenizer.json (about 0.5 s for 50k tokens)."""
        with self._lock:
            if self._ll is None:
                n_vocab = max(self.vocab_size, self._tokenizer.vocab_size)
                eos = sorted(self.stop_ids) or None
                self._ll = llguidance.LLTokenizer(self._tokenizer.to_json(), n_vocab=n_vocab, eos_token=eos)
            return self._ll

    @staticmethod
    def json_schema(schema: dict) -> str:
        """The grammar of JSON text valid under ``schema`` (a dict already checked to be JSON)."""
        return llguidance.LLMatcher.grammar_from_json_schema(with_json_options(schema))

    def check(self, grammar: str, field: str) -> None:
        """Raise InputError naming ``field`` if ``grammar`` is invalid or unsupported (an unimplemented
        JSON Schema keyword, an unsatisfiable bound, a regex llguidance cannot take, a limit passed)."""
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.ll_tokenizer,
                                                                                limits=LIMITS)
        if is_error:
            raise InputError(f"{field}: {_brief(messages[0] if messages else 'not a usable grammar')}")

    def constraint(self, grammar: str, field: str) -> "Constraint":
        """A fresh matcher for one sequence; InputError naming ``field`` if the grammar is refused."""
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0, limits=LIMITS)
        if matcher.is_error():
            raise InputError(f"{field}: {_brief(matcher.get_error())}")
        return Constraint(matcher, self.vocab_size, self.ll_tokenizer.vocab_size, self.stop_ids)


class Constraint:
    """One sequence's grammar state: which token ids may come next, advanced token by token."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, ll_vocab: int, stop_ids: frozenset[int]):
        self._matcher = matcher
        self._vocab = vocab_size  # the model's logits: (vocab_size,)
        self._bitmask = allocate_token_bitmask(1, ll_vocab)  # (1, ceil(ll_vocab / 32)) int32, bit i = token i
        self._stops = np.array(sorted(i for i in stop_ids if i < vocab_size), dtype=np.int64)

    def allowed(self) -> np.ndarray:
        """(vocab_size,) bool: the tokens the grammar allows now (every stop token once it may end)."""
        fill_next_token_bitmask(self._matcher, self._bitmask)
        if self._matcher.is_error():
            raise RuntimeError(f"grammar matcher failed: {_brief(self._matcher.get_error())}")
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[:self._vocab].astype(bool)
        if self._stops.size and bits[self._stops].any():
            bits[self._stops] = True
        if bits.size < self._vocab:  # the model has more rows than llguidance knows tokens: never allowed
            bits = np.concatenate([bits, np.zeros(self._vocab - bits.size, dtype=bool)])
        if not bits.any():
            raise RuntimeError("grammar matcher allows no token of the model's vocabulary")
        return bits

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` (vocab_size,) with every forbidden token at -inf (a new array)."""
        return np.where(self.allowed(), logits, np.float32(-np.inf))

    def advance(self, token: int) -> bool:
        """Take the drawn ``token`` (not a stop token); True when the grammar can take nothing more."""
        if not self._matcher.consume_token(int(token)):
            raise RuntimeError(f"grammar matcher refused token {token}: {_brief(self._matcher.get_error())}")
        return self._matcher.is_stopped()


def with_json_options(schema: dict) -> dict:
    """``schema`` with JSON_OPTIONS as its llguidance options ("x-guidance"), whatever it said there."""
    return {**{k: v for k, v in schema.items() if k != "x-guidance"}, "x-guidance": JSON_OPTIONS}


def check_json(value, field: str) -> str:
    """``value`` as JSON text, or an InputError naming ``field`` if it is not plain JSON data."""
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise InputError(f"{field}: not JSON data ({_brief(str(e))})") from None


def _brief(message: str) -> str:
    """llguidance's error text, first lines only and cut short."""
    message = message.strip()
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "..."
