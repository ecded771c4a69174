"""Fitting a conversation into the model's context: the oldest turns make room, system messages stay.

A long chat outgrows any context. Rather than refusing the whole conversation, a
front end may opt in to dropping its oldest turns (never silently: the caller is
told how many messages went, and says so). A turn is a user message with the
replies that follow it up to the next user message; a turn goes whole, so the
conversation still starts with a user message, as chat templates expect.

    [system, u1, a1, u2, a2, u3]  ->  [system, u2, a2, u3]  ->  [system, u3]

System messages are kept wherever they are, and so is the last turn (the message
being answered): when even that does not fit, the prompt check (generate.py) refuses
it as before, naming its length and the context.
"""

from __future__ import annotations

from typing import Callable, Sequence


def turn_starts(messages: Sequence[dict]) -> list[int]:
    """Indices where a droppable turn starts: each user message, and the first non-system message before any."""
    starts = []
    for i, message in enumerate(messages):
        if message["role"] == "user" or (not starts and message["role"] != "system"):
            starts.append(i)
    return starts


def drop_oldest_turn(messages: Sequence[dict]) -> list[dict] | None:
    """``messages`` without its oldest turn (system messages kept); None when only the last turn is left."""
    starts = turn_starts(messages)
    if len(starts) < 2:
        return None
    first, end = starts[0], starts[1]
    return [m for i, m in enumerate(messages) if not first <= i < end or m["role"] == "system"]


def fit_messages(messages: Sequence[dict], count_tokens: Callable[[list[dict]], int],
                 budget: int) -> tuple[list[dict], int]:
    """Drop the oldest turns until ``count_tokens(messages) <= budget``; return (kept, messages dropped).

    ``count_tokens`` is the prompt length the model would see (the chat template applied).
    Stops at the last turn even if it is still over budget: what to do then is the caller's.
    """
    kept = list(messages)
    while count_tokens(kept) > budget:
        shorter = drop_oldest_turn(kept)
        if shorter is None:
            break
        kept = shorter
    return kept, len(messages) - len(kept)
