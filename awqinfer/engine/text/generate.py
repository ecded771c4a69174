"""Token generation: prefill the prompt, then decode one token at a time.

``generate_tokens`` yields ``(token, finish_reason)``: the reason is None until
the last token, then "stop" (the token is an EOS id) or "length" (max_tokens
reached, or the KV cache, sized to the model's context, is full). Text is made
elsewhere (engine/llm.py); this layer only knows ids.

The prompt goes through in chunks of PREFILL_CHUNK tokens, so a front end can show
progress (``on_prefill(done, total)``) and a ``cancel`` event (a closed connection, a
Ctrl-C) takes effect between chunks and between decode steps, also during a long
prompt; a cancelled generation simply ends. A ``Sequence`` holds one generation's
state; ``generate_tokens`` runs one alone, scheduler.py runs many together.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator

import numpy as np

from ...errors import InputError
from ..model.cache import KVCache, max_context
from ..model.forward import Model
from .sampling import History, SamplingParams, next_token

PREFILL_CHUNK = 256  # prompt tokens per forward call: a cancel or a progress report waits at most one chunk


def check_prompt(model: Model, prompt_ids: list[int]) -> None:
    """Refuse, before any work, a prompt that is empty, out of vocabulary or longer than the context."""
    limit = max_context(model.config)
    if not prompt_ids:
        raise InputError("prompt: it encodes to no tokens; allowed: text that gives at least one token")
    if len(prompt_ids) > limit:
        raise InputError(f"prompt: got {len(prompt_ids)} tokens; allowed: at most {limit}, "
                         "the model's context (prompts are never truncated)")
    vocab = model.config.vocab_size
    bad = [i for i in prompt_ids if not 0 <= i < vocab]
    if bad:
        raise InputError(f"prompt: token id {bad[0]} is outside the model's vocabulary 0..{vocab - 1}")


class Sequence:
    """One generation's state: prompt, sampling (params, RNG, penalty history), KV cache, progress.

    The steps are the same whether a sequence runs alone (``generate_tokens``) or batched with
    others (scheduler.py): ``start`` makes the cache, ``prefill_chunk`` feeds the prompt a
    chunk at a time, ``sample`` draws the next token from ``logits`` and says whether it is the
    last, and whoever runs the model puts the next logits back into ``logits``.
    """

    def __init__(self, model: Model, prompt_ids: list[int], params: SamplingParams, stop_ids: frozenset[int],
                 cancel: threading.Event | None = None, on_prefill: Callable[[int, int], None] | None = None):
        self.model, self.prompt_ids, self.params, self.stop_ids = model, list(prompt_ids), params, stop_ids
        self.cancel = cancel or threading.Event()
        self.on_prefill = on_prefill
        # the cache holds the prompt and every token but the last (never fed back), capped at the context
        self.capacity = min(len(self.prompt_ids) + params.max_tokens - 1, max_context(model.config))
        self.cache: KVCache | None = None
        self.prefilled = 0  # prompt tokens already in the cache
        self.logits: np.ndarray | None = None  # (vocab,) for the next token
        self.generated = 0
        self.history = History(model.config.vocab_size, self.prompt_ids)
        self.rng = np.random.default_rng(params.seed)

    @property
    def kv_bytes(self) -> int:
        """What this sequence reserves in the KV budget: its largest length's keys and values."""
        return self.capacity * self.model.kv_bytes_per_position

    def start(self) -> None:
        """Make the KV cache, reserving kv_bytes in the KV budget (an InputError if there is no room now)."""
        self.cache = self.model.new_cache(self.capacity)

    @property
    def reading_prompt(self) -> bool:
        """Whether part of the prompt has still to go through the model."""
        return self.prefilled < len(self.prompt_ids)

    def prefill_chunk(self) -> bool:
        """Feed the next PREFILL_CHUNK prompt tokens; True once the whole prompt is in (logits set)."""
        chunk = self.prompt_ids[self.prefilled:self.prefilled + PREFILL_CHUNK]
        self.logits = self.model.forward(chunk, self.cache, last_only=True)[0]
        self.prefilled += len(chunk)
        if self.on_prefill is not None:
            self.on_prefill(self.prefilled, len(self.prompt_ids))
        return not self.reading_prompt

    def sample(self) -> tuple[int, str | None]:
        """The next token from ``logits``, and "stop", "length" or None (more to come)."""
        token = next_token(self.logits, self.history, self.params, self.rng)
        self.generated += 1
        self.logits = None
        if token in self.stop_ids:
            return token, "stop"
        if self.generated == self.params.max_tokens or self.cache.free == 0:
            return token, "length"
        self.history.add(token)
        return token, None

    def close(self) -> None:
        """Free the cache now (its memory and its budget reservation)."""
        if self.cache is not None:
            self.cache.close()


def generate_tokens(model: Model, prompt_ids: list[int], params: SamplingParams, stop_ids: frozenset[int],
                    cancel: threading.Event | None = None,
                    on_prefill: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, str | None]]:
    """Yield generated tokens with their finish reason (None until the last one): one sequence alone.

    The readable generation loop; the scheduler runs the same Sequence steps for many sequences
    at once. The caller has checked the prompt (``check_prompt``); ``Model.forward`` checks ids
    and cache again before any kernel. Closing the generator early frees the cache with it.
    """
    seq = Sequence(model, prompt_ids, params, stop_ids, cancel, on_prefill)
    seq.start()
    try:
        while not seq.cancel.is_set() and not seq.prefill_chunk():
            pass
        while not seq.cancel.is_set():
            token, reason = seq.sample()
            yield token, reason
            if reason is not None:
                return
            seq.logits = model.forward([token], seq.cache, last_only=True)[0]
    finally:
        seq.close()
