"""Token generation: prefill the prompt, then decode one token at a time.

``generate_tokens`` yields ``(token, finish_reason)``: the reason is None until
the last token, then "stop" (the token is an EOS id) or "length" (max_tokens
reached, or the KV cache, sized to the model's context, is full). Text is made
elsewhere (engine/llm.py); this layer only knows ids.

The prompt goes through in chunks of PREFILL_CHUNK tokens, so a front end can show
progress (``on_prefill(done, total)``) and a ``cancel`` event (a closed connection, a
Ctrl-C) takes effect between chunks and between decode steps, also during a long
prompt; a cancelled generation simply ends.
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


def prefill(model: Model, cache: KVCache, prompt_ids: list[int], cancel: threading.Event | None = None,
            on_prefill: Callable[[int, int], None] | None = None) -> np.ndarray | None:
    """Run the prompt in chunks; return the logits (vocab,) for the first new token (None if cancelled)."""
    logits = None
    for start in range(0, len(prompt_ids), PREFILL_CHUNK):
        if cancel is not None and cancel.is_set():
            return None
        logits = model.forward(prompt_ids[start:start + PREFILL_CHUNK], cache, last_only=True)[0]
        if on_prefill is not None:
            on_prefill(min(start + PREFILL_CHUNK, len(prompt_ids)), len(prompt_ids))
    return logits


def decode_token(model: Model, cache: KVCache, token: int) -> np.ndarray:
    """Feed one generated token; return the logits (vocab,) for the next."""
    return model.forward([token], cache, last_only=True)[0]


def generate_tokens(model: Model, prompt_ids: list[int], params: SamplingParams, stop_ids: frozenset[int],
                    cancel: threading.Event | None = None,
                    on_prefill: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, str | None]]:
    """Yield generated tokens with their finish reason (None until the last one); see the module docstring.

    The cache holds the prompt and every token but the last (which is never fed back),
    capped at the model's context. ``params.seed`` seeds the one random generator of
    the run. Closing the generator early frees the cache with it. The caller has checked the
    prompt (``check_prompt``); ``Model.forward`` checks ids and cache again before any kernel.
    """
    cache = model.new_cache(min(len(prompt_ids) + params.max_tokens - 1, max_context(model.config)))
    history = History(model.config.vocab_size, prompt_ids)
    rng = np.random.default_rng(params.seed)
    logits = prefill(model, cache, prompt_ids, cancel, on_prefill)
    for n in range(1, params.max_tokens + 1):
        if logits is None or (cancel is not None and cancel.is_set()):
            return
        token = next_token(logits, history, params, rng)
        if token in stop_ids:
            yield token, "stop"
            return
        if n == params.max_tokens or cache.free == 0:
            yield token, "length"
            return
        yield token, None
        history.add(token)
        logits = decode_token(model, cache, token)
