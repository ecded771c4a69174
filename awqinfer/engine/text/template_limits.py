"""The limits a chat template renders under, and the budget that holds one render to them.

A chat template is code from a checkpoint's author rendering data from a request, so neither
may exhaust the machine. Each render gets a Budget, held in a context variable (renders in
different threads never share one), that the sandbox (sandbox.py) consults *before* it builds
anything big:

- one value: no string, list, or text form of a container over ``cap`` characters, where cap
  is the inputs' own size plus ``max_chars``: what the model's context can hold, its tokens
  times its longest token's characters (at least MIN_CHARS);
- the rendered text: at most ``cap`` characters;
- all a render builds: at most CREATED_FACTOR x cap characters (list slots count as one);
- time: ``seconds`` of wall clock, checked at every operation, call, loop step and output, so
  it holds in any thread (a signal would only work in the main one);
- loops: ``loop_steps`` iterations in all, and ``range()`` of at most ``range_items`` numbers;
- recursion: macros, blocks and recursive loops at most ``call_depth`` calls deep;
- integers: at most ``int_bits`` bits (``10 ** 10 ** 10`` would take gigabytes and hours).
"""

from __future__ import annotations

import contextvars
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from contextlib import contextmanager
from dataclasses import dataclass
from time import monotonic

from jinja2.utils import Namespace

MIN_CHARS = 1 << 16  # the floor of max_chars: a long system prompt on a tiny test model is not refused
DEFAULT_CHARS = 1 << 22  # max_chars when the model's context is not known
CREATED_FACTOR = 16  # a render may build this many times its cap, in all; real templates build 2-8x
_TICK_EVERY = 1024  # nodes or chunks between clock checks inside one long walk


@dataclass(frozen=True)
class RenderLimits:
    """What one render of a chat template may do (module docstring)."""

    max_chars: int = DEFAULT_CHARS
    seconds: float = 1.0
    loop_steps: int = 1 << 20
    range_items: int = 100_000  # jinja2's own sandbox MAX_RANGE
    call_depth: int = 64
    int_bits: int = 4096
    why: str = "awqinfer's default, the model's context being unknown"  # where max_chars comes from

    @classmethod
    def for_context(cls, tokens: int, longest_token: int) -> "RenderLimits":
        """Limits for a model of ``tokens`` context whose longest vocabulary entry has ``longest_token`` chars.

        A prompt of ``tokens`` tokens has at most tokens x longest_token characters, so any
        rendered text longer than that cannot fit the context whatever it says.
        """
        chars = max(MIN_CHARS, tokens * max(longest_token, 1))
        return cls(max_chars=chars, why=f"the model's context of {tokens:,} tokens x its longest token of "
                                        f"{longest_token} characters, at least {MIN_CHARS:,}")


class LimitExceeded(Exception):
    """A render went past one of its limits; the message says what the template did."""


class TooBig(Exception):
    """text_size passed its limit; ``size`` is what it had counted so far."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


class Budget:
    """The limits of one render and what it has used of them."""

    def __init__(self, limits: RenderLimits, input_chars: int = 0, memo: dict | None = None):
        self.limits = limits
        self.cap = limits.max_chars + input_chars  # one value, and the rendered text
        self.created, self.created_cap = 0, CREATED_FACTOR * self.cap
        self.steps, self.depth = 0, 0
        self.deadline = monotonic() + limits.seconds
        self.memo = memo if memo is not None else {}  # id -> text size of the inputs' containers

    def tick(self) -> None:
        """Refuse to go on past the deadline."""
        if monotonic() > self.deadline:
            raise LimitExceeded(f"runs for more than {self.limits.seconds:g} s")

    def step(self) -> None:
        """One loop iteration."""
        self.steps += 1
        if self.steps > self.limits.loop_steps:
            raise LimitExceeded(f"runs more than {self.limits.loop_steps:,} loop iterations")
        self.tick()

    def enter(self, what: str) -> None:
        """One call deeper into macros, blocks or a recursive loop (``leave`` undoes it)."""
        self.depth += 1
        if self.depth > self.limits.call_depth:
            raise LimitExceeded(f"nests calls to {what} more than {self.limits.call_depth} deep (runaway recursion)")

    def leave(self) -> None:
        """Back out of the call ``enter`` counted."""
        self.depth -= 1

    def measure(self, value, what: str) -> int:
        """The text size of ``value``, refused when over the cap: before it is printed, compared or hashed."""
        if type(value) is str:  # the common case; every string was measured when it was built
            return len(value)
        try:
            return text_size(value, self.cap, self.memo, self.tick)
        except TooBig as e:
            raise LimitExceeded(f"{what} a value of more than {e.size:,} characters; {self.limit()}") from None

    def expect(self, size: int, what: str) -> None:
        """Refuse, before building it, a result of ``size`` characters (or list slots)."""
        self.tick()
        if size > self.cap:
            raise LimitExceeded(f"would build {size:,} characters with {what}; {self.limit()}")
        if self.created + size > self.created_cap:
            raise LimitExceeded(f"would build more than {self.created_cap:,} characters in all with {what} "
                                f"({CREATED_FACTOR} x the limit of one value, {self.cap:,})")

    def charge(self, value, what: str) -> None:
        """Count what was built: a string's characters or a container's slots."""
        size = len(value) if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) else 1
        self.expect(size, what)
        self.created += size

    def join(self, pieces, what: str) -> str:
        """Text that arrives in pieces (a template's output, tojson's chunks), refused as soon as it is too long."""
        parts, size, room = [], 0, min(self.cap, self.created_cap - self.created)
        for piece in pieces:
            size += len(piece)
            if size > room:
                self.expect(size, what)
            parts.append(piece)
            if len(parts) % _TICK_EVERY == 0:
                self.tick()
        text = "".join(parts)
        self.charge(text, what)
        return text

    def limit(self) -> str:
        """The cap, and where it comes from, for an error message."""
        return (f"the limit is {self.cap:,} (the inputs' size plus {self.limits.max_chars:,}: "
                f"{self.limits.why})")


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("awqinfer_template_budget", default=None)


def current() -> Budget | None:
    """The budget of the render running in this thread (None outside a render, e.g. while compiling)."""
    return _CURRENT.get()


def budget() -> Budget:
    """The running render's budget; rendering outside ``limited(...)`` is a bug, refused."""
    b = _CURRENT.get()
    if b is None:
        raise LimitExceeded("was rendered without limits (awqinfer renders templates only through ChatTemplate)")
    return b


@contextmanager
def limited(b: Budget) -> Iterator[Budget]:
    """``with limited(budget):`` makes ``budget`` the current one for this thread's render."""
    token = _CURRENT.set(b)
    try:
        yield b
    finally:
        _CURRENT.reset(token)


_CONTAINERS = (list, tuple, set, frozenset, dict, KeysView, ValuesView, ItemsView, Namespace)
_END = object()


def _leaf_size(value, inner: bool) -> int | None:
    """Characters of str(value), or of repr(value) when ``inner`` (inside a container); None for a container."""
    if isinstance(value, str):
        if not inner:
            return len(value)
        if value.isprintable():
            return len(value) + 2 + value.count("\\") + value.count("'")
        return 4 * len(value) + 2  # \n, \t, \x00: at most 4 characters each (wider escapes are rare)
    if isinstance(value, (bytes, bytearray)):
        return 4 * len(value) + 3
    if value is None or isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return value.bit_length() * 31 // 100 + 2
    if isinstance(value, (float, complex)):
        return 50
    if isinstance(value, _CONTAINERS):
        return None
    return 64  # other objects print as their type and address


def _children(value):
    """What a container prints: a dict's keys and values in turn, a namespace's attributes."""
    if isinstance(value, Namespace):
        return iter((value._Namespace__attrs,))
    if isinstance(value, dict):
        return (x for pair in value.items() for x in pair)
    return iter(value)


def text_size(value, limit: int, memo: dict | None = None, tick=None, record: bool = False) -> int:
    """An upper bound on len(str(value)), found without building it; raises TooBig past ``limit``.

    Containers count as Python prints them, a shared sub-container once per reference (as
    str() prints it) but walked once, so the walk takes at most about ``limit`` steps and no
    more than the distinct containers it meets. ``memo`` maps id -> size of containers measured
    before; with ``record`` every container measured is added to it (only for values that stay
    alive and unchanged, as a render's inputs do, so that an id keeps naming the same value).
    """
    size = _leaf_size(value, inner=False)
    if size is not None:
        if size > limit:
            raise TooBig(size)
        return size
    memo = {} if memo is None else memo
    if id(value) in memo:
        if memo[id(value)] > limit:
            raise TooBig(memo[id(value)])
        return memo[id(value)]
    done = {}  # id -> size of the containers this walk finished; they stay alive while it runs
    stack, open_ids, steps, total = [[value, _children(value), 14]], {id(value)}, 0, 14  # 14: brackets, a name
    while True:
        frame = stack[-1]
        child = next(frame[1], _END)
        if child is _END:  # a container done: its full size goes to its parent
            stack.pop()
            open_ids.discard(id(frame[0]))
            done[id(frame[0])] = frame[2]
            if record:
                memo[id(frame[0])] = frame[2]
            if not stack:
                return frame[2]
            stack[-1][2] += frame[2] + 2
            continue
        steps += 1
        if tick is not None and steps % _TICK_EVERY == 0:
            tick()
        size = _leaf_size(child, inner=True)
        if size is None:
            size = memo.get(id(child), done.get(id(child)))
        if size is None and id(child) not in open_ids:  # a container met for the first time: walk into it
            stack.append([child, _children(child), 14])
            open_ids.add(id(child))
            total += 16
        else:
            size = 5 if size is None else size  # a cycle prints as [...]
            frame[2] += size + 2
            total += size + 2
        if total > limit:
            raise TooBig(total)
