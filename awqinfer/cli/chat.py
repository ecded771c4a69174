"""``awqinfer chat [--model M]``: an interactive multi-turn chat that keeps the conversation.

Each line typed is a user message; the reply streams back. ``/reset`` forgets the
conversation, ``/exit`` (or end of input, Ctrl-D) leaves. Ctrl-C while a reply is
being generated stops that reply; at the prompt it leaves.
"""

from __future__ import annotations

import sys

from .common import add_model_flags, add_sampling_flags, load_model, sampling_inputs, write


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("chat", help="an interactive multi-turn chat",
                              description="Chat with a model; the conversation is kept between turns.")
    add_model_flags(p)
    add_sampling_flags(p)


def read_line(prompt: str) -> str | None:
    """One line of user input (None at end of input); the prompt is shown only on a terminal."""
    if sys.stdin.isatty():
        try:
            return input(prompt)
        except EOFError:
            return None
    line = sys.stdin.readline()
    return None if not line else line.rstrip("\n")


def main(args) -> int:
    llm = load_model(args)
    sampling = sampling_inputs(args)
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    history: list[dict] = []
    print(f"awqinfer chat with {llm.name}: /reset forgets the conversation, /exit leaves", file=sys.stderr)
    while True:
        try:
            line = read_line(">>> ")
        except KeyboardInterrupt:
            return 0
        if line is None or line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history.clear()
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        reply = []
        stream = llm.run({"messages": system + history, "stream": True, **sampling})
        try:
            for chunk in stream:
                reply.append(chunk["response"])
                write(chunk["response"])
        except KeyboardInterrupt:
            stream.close()  # a stopped reply stays in the conversation as far as it got
        write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
