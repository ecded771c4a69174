"""Reading tool calls out of the generated text as it streams (the format tools.py imposes).

The text chunks of a generation with tools go through a ``ToolCallReader``: text before the
first ``<tool_call>`` is the answer and streams on as ``{"response": ...}``, held back only
while it could be the start of ``<tool_call>``; each call then streams as OpenAI streams tool
calls, so that joining the pieces gives the call:

    {"response": "", "tool_call_delta": {"index": 0, "name": "get_weather"}}      the name first
    {"response": "", "tool_call_delta": {"index": 0, "arguments": "{\\"city\\": "}}  then the arguments,
    {"response": "", "tool_call_delta": {"index": 0, "arguments": "\\"Paris\\"}"}}      piece by piece

and the last chunk carries ``tool_calls``: [{"name", "arguments": {...}}] and finish_reason
"tool_calls" (or "length" when max_tokens cut the output; a call cut short is not a call, and
its text stays in ``response``). The grammar wrote every call, so a complete call always parses;
JSON without raw newlines is what makes "}\\n</tool_call>" an unambiguous end.
"""

from __future__ import annotations

import json
import re
from typing import Iterator

from .tools import CALL_END, TRIGGER

_HEAD = re.compile(r'\n\{"name": ("(?:[^"\\]|\\.)*"), "arguments": ')
_ARGS_END = "}\n" + CALL_END
_NEXT = "\n" + TRIGGER


def _held(text: str, marker: str) -> int:
    """How many trailing characters of ``text`` could begin ``marker`` (so must wait for more)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolCallReader:
    """Splits generated text into the answer and tool calls, chunk by chunk."""

    def __init__(self):
        self.calls: list[dict] = []  # complete calls: {"name", "arguments"}
        self._pending = ""  # text received and not yet handed out or consumed
        self._in_call = False  # inside <tool_call> ... </tool_call>
        self._name: str | None = None  # the current call's name, once read
        self._sent_args = 0  # characters of the current call's arguments already handed out
        self._raw = ""  # the current call's text, from its <tool_call>, for a cut-short ending

    def feed(self, text: str) -> Iterator[dict]:
        """The chunks that ``text`` (the next piece of output) completes."""
        self._pending += text
        while True:
            if not self._in_call:
                if self.calls:  # after a call: another one, or nothing
                    if not self._pending.startswith(_NEXT):
                        return
                    self._pending = self._pending[len(_NEXT) - len(TRIGGER):]
                start = self._pending.find(TRIGGER)
                if start < 0:
                    cut = len(self._pending) - _held(self._pending, TRIGGER)
                    answer, self._pending = self._pending[:cut], self._pending[cut:]
                    if answer:
                        yield {"response": answer}
                    return
                if self._pending[:start]:
                    yield {"response": self._pending[:start]}
                self._raw, self._pending = TRIGGER, self._pending[start + len(TRIGGER):]
                self._in_call, self._name, self._sent_args = True, None, 0
            done = yield from self._read_call()
            if not done:
                return

    def _read_call(self) -> Iterator[dict]:
        """Hand out what is new of the current call; True once the call is complete."""
        index = len(self.calls)
        if self._name is None:
            head = _HEAD.match(self._pending)
            if head is None:
                return False
            self._name = json.loads(head.group(1))
            self._raw += head.group(0)
            self._pending = self._pending[head.end():]
            yield {"response": "", "tool_call_delta": {"index": index, "name": self._name}}
        end = self._pending.find(_ARGS_END)
        args = self._pending if end < 0 else self._pending[:end]
        ready = len(args) - (_held(args, _ARGS_END) if end < 0 else 0)
        if ready > self._sent_args:
            yield {"response": "", "tool_call_delta": {"index": index, "arguments": args[self._sent_args:ready]}}
            self._sent_args = ready
        if end < 0:
            return False
        self.calls.append({"name": self._name, "arguments": json.loads(args)})
        self._pending = self._pending[end + len(_ARGS_END):]
        self._in_call, self._raw = False, ""
        return True

    def leftover(self) -> str:
        """At the end: text not handed out (an unfinished call's, or what was held back)."""
        text = (self._raw + self._pending) if self._in_call else self._pending
        self._pending, self._raw = "", ""
        return text


def read_tool_calls(chunks: Iterator[dict]) -> Iterator[dict]:
    """Text chunks of a generation with tools -> answer chunks, tool-call pieces, and a last chunk
    with ``tool_calls`` (when the model made any) and finish_reason "tool_calls"."""
    reader = ToolCallReader()
    for chunk in chunks:
        yield from reader.feed(chunk["response"])
        if "finish_reason" in chunk:
            last = {**chunk, "response": reader.leftover()}
            if reader.calls:
                last["tool_calls"] = reader.calls
                if chunk["finish_reason"] == "stop":
                    last["finish_reason"] = "tool_calls"
            yield last
