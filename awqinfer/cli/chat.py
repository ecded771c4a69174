"""``awqinfer chat [--model M]``: an interactive multi-turn chat that keeps the conversation.

Each line typed is a user message; the reply streams back. Lines starting with "/" are
commands (COMMANDS; "//" sends a line that starts with "/"). When the conversation
outgrows the model's context, its oldest turns make room (the system prompt stays) with
a note on stderr, and the chat goes on. A message the model cannot take is refused
with the reason, and the chat goes on. Ctrl-C while a reply is being generated stops
that reply (what was shown stays in the conversation); at the prompt it leaves.
"""

from __future__ import annotations

import argparse
import sys

import awqinfer

from .common import add_model_flags, add_sampling_flags, add_verbose_flag, load_model, note, sampling_inputs
from .generation import fit_conversation, stream_reply

COMMANDS = {
    "/help": "show these commands",
    "/reset": "forget the conversation (the system prompt stays)",
    "/exit": "leave the chat (also /quit, or Ctrl-D)",
}
EXIT_COMMANDS = ("/exit", "/quit")


def command_help() -> str:
    """The chat commands, one per line, as --help and /help show them."""
    return "\n".join(f"  {name:<8} {what}" for name, what in COMMANDS.items()) + \
        "\n  //...    send a message that starts with '/'"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "chat", help="an interactive multi-turn chat", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Chat with a model; the conversation is kept between turns, and when it outgrows the "
                    "model's context\nits oldest turns make room (the system prompt stays).\n\n"
                    f"commands, typed at the >>> prompt:\n{command_help()}\n"
                    "Ctrl-C stops a reply; at the prompt it leaves.")
    add_model_flags(p)
    add_sampling_flags(p)
    add_verbose_flag(p)


def read_line(prompt: str) -> str | None:
    """One line of user input (None at end of input); the prompt is shown only on a terminal."""
    if sys.stdin.isatty():
        try:
            return input(prompt)
        except EOFError:
            return None
    line = sys.stdin.readline()
    return None if not line else line.rstrip("\n")


def command(line: str, history: list[dict], system: list[dict]) -> bool:
    """Carry out a /command; returns False when the chat should end."""
    name = line.split()[0]
    if name in EXIT_COMMANDS:
        return False
    if name == "/reset":
        forgotten = f"{len(history)} messages" if history else "it was empty"
        history.clear()
        note(f"conversation forgotten ({forgotten})" + ("; the system prompt stays" if system else ""))
    elif name == "/help":
        print(command_help(), file=sys.stderr)
    else:
        note(f"unknown command {name}; /help lists the commands (start a message with // to send a '/')")
    return True


def main(args) -> int:
    llm = load_model(args)
    sampling = sampling_inputs(args)
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    history: list[dict] = []
    note(f"chat with {llm.name}: /help lists the commands, /exit leaves")
    while True:
        try:
            line = read_line(">>> ")
        except KeyboardInterrupt:
            return 0
        if line is None:
            return 0
        text = line.strip()
        if text.startswith("/") and not text.startswith("//"):
            if not command(text, history, system):
                return 0
            continue
        if not text:
            continue
        history.append({"role": "user", "content": line.lstrip()[1:] if text.startswith("//") else line})
        try:
            messages = fit_conversation(llm, system + history, sampling.get("max_tokens"))
            history[:] = messages[len(system):]
            reply = stream_reply(llm, {"messages": messages, **sampling}, verbose=args.verbose)
        except awqinfer.InputError as e:  # this message cannot be answered; the conversation can go on
            history.pop()
            note(f"error: {e}")
            continue
        # a stopped reply stays in the conversation as far as it got
        history.append({"role": "assistant", "content": reply.text})
