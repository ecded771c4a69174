"""One generation on the terminal, shared by ``run`` and ``chat``.

The reply goes to stdout as it streams; everything about it goes to stderr, one line each:

- a progress bar while a long prompt is read (prefill), once it is projected to take
  more than PREFILL_BAR_AFTER seconds, on a terminal only;
- with ``-v``: prompt tokens, time to first token, decode speed, completion tokens and
  the finish reason;
- when stdout is a terminal and the reply was cut (finish reason "length"), what cut it,
  so a reply that stops mid-sentence is not a mystery.

Ctrl-C stops the reply (the stream is closed, freeing its cache); the caller decides
what an interruption means (``run`` exits 130, ``chat`` keeps the conversation).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from awqinfer.engine.model.cache import max_context
from awqinfer.engine.text.schema import FIELDS

from .common import note

PREFILL_BAR_AFTER = 2.0  # seconds: a prompt read faster than this shows no bar


@dataclass
class Timing:
    """When a generation started, finished its prompt, and ended (time.perf_counter seconds)."""

    start: float
    prompt_done: float | None = None  # the first token's logits are ready
    end: float | None = None


class PrefillProgress:
    """``on_prefill(done, total)`` for LLM.run: records when the prompt is done, draws a bar if it is slow."""

    def __init__(self, timing: Timing, show: bool, clock=time.perf_counter, after: float = PREFILL_BAR_AFTER):
        self.timing, self.show, self.clock, self.after = timing, show, clock, after
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if done >= total:
            self.timing.prompt_done = now
            self.close()
            return
        if self.bar is None and self.show and (now - self.timing.start) * total / done > self.after:
            self.bar = tqdm(total=total, initial=done, desc="reading the prompt", unit="tok", leave=False,
                            file=sys.stderr, dynamic_ncols=True)
        elif self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class Reply:
    """What one generation gave: its chunks (the last with usage and finish reason, unless stopped)."""

    chunks: list[dict] = field(default_factory=list)
    interrupted: bool = False
    timing: Timing = field(default_factory=lambda: Timing(time.perf_counter()))

    @property
    def text(self) -> str:
        return "".join(chunk["response"] for chunk in self.chunks)

    @property
    def usage(self) -> dict | None:
        return self.chunks[-1].get("usage") if self.chunks else None

    @property
    def finish_reason(self) -> str | None:
        return self.chunks[-1].get("finish_reason") if self.chunks else None


def stream_reply(llm, inputs: dict, verbose: bool = False, echo: bool = True) -> Reply:
    """Run ``inputs`` on ``llm``, streamed: with ``echo`` the text goes to stdout as it comes; notes to stderr.

    An echoed reply ends with a newline. A Ctrl-C stops the reply and sets ``interrupted``.
    """
    reply = Reply()
    progress = PrefillProgress(reply.timing, show=sys.stderr.isatty())
    chunks = llm.run({**inputs, "stream": True}, on_prefill=progress)
    try:
        for chunk in chunks:
            reply.chunks.append(chunk)
            if echo:
                write(chunk["response"])
    except KeyboardInterrupt:
        reply.interrupted = True
    finally:
        chunks.close()
        progress.close()
    reply.timing.end = time.perf_counter()
    if echo:
        write("\n")
    if verbose:
        note(stats_line(reply))
    if reply.finish_reason == "length" and sys.stdout.isatty():
        note(cut_reason(llm, inputs, reply))
    return reply


def stats_line(reply: Reply) -> str:
    """Prompt tokens, time to first token, decode speed, completion tokens, finish reason: one line."""
    t = reply.timing
    if reply.usage is None:  # stopped by Ctrl-C before its end
        first = f"; first token after {t.prompt_done - t.start:.2f} s" if t.prompt_done is not None else ""
        return f"stopped (Ctrl-C) after {t.end - t.start:.2f} s{first}"
    prompt, completion = reply.usage["prompt_tokens"], reply.usage["completion_tokens"]
    first = t.prompt_done - t.start
    parts = [f"{prompt} prompt tokens", f"first token after {first:.2f} s ({prompt / first:.0f} prompt tokens/s)"]
    if completion > 1 and t.end > t.prompt_done:
        parts.append(f"{(completion - 1) / (t.end - t.prompt_done):.1f} tokens/s decoding")
    parts.append(f"{completion} completion tokens")
    parts.append(f"finish reason: {reply.finish_reason}")
    return ", ".join(parts)


def cut_reason(llm, inputs: dict, reply: Reply) -> str:
    """Why a reply that ended with finish reason "length" stopped, and what to change."""
    limit = inputs.get("max_tokens", FIELDS["max_tokens"].default)
    if reply.usage["completion_tokens"] >= limit:
        return f"the reply was cut at max_tokens ({limit}); --max-tokens N allows a longer one"
    context = max_context(llm.model.config)
    return f"the reply was cut: prompt and reply filled the model's context ({context} tokens)"


def fit_conversation(llm, messages: list[dict], max_tokens: int | None = None) -> list[dict]:
    """``llm.fit_messages`` with a one-line note on stderr when the oldest turns had to go."""
    kept, dropped = llm.fit_messages(messages, max_tokens or FIELDS["max_tokens"].default)
    if dropped:
        context = max_context(llm.model.config)
        turns = "message" if dropped == 1 else "messages"
        note(f"the conversation outgrew the model's context ({context} tokens with room for the reply): "
             f"dropped the oldest {dropped} {turns}; the system prompt stays")
    return kept


def write(text: str) -> None:
    """Print a piece of streamed text at once."""
    sys.stdout.write(text)
    sys.stdout.flush()
