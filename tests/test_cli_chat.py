"""``awqinfer chat`` driven through stdin, and ``run`` with conversations: what a first-time user runs into.

Each expected reply is computed with the Python API on the same tiny model (its context
is 256 tokens, so a few dozen short turns outgrow it).
"""

import json

import pytest
from test_cli import cli, one_line_error

import awqinfer

PARAMS = {"max_tokens": 8, "temperature": 0}
GREEDY = ["--max-tokens", "8", "--temperature", "0"]


def expected_chat(llm, lines, system=None):
    """The replies and drop notices chat should give for ``lines``, by the policy it documents."""
    prefix = [{"role": "system", "content": system}] if system else []
    history, replies, drops = [], [], 0
    for line in lines:
        history.append({"role": "user", "content": line})
        kept, dropped = llm.fit_messages(prefix + history, PARAMS["max_tokens"])
        drops += dropped > 0
        history = kept[len(prefix):]
        reply = llm.run({"messages": kept, **PARAMS})["response"]
        history.append({"role": "assistant", "content": reply})
        replies.append(reply)
    return replies, drops


def test_a_chat_that_outgrows_the_context_drops_its_oldest_turns_and_goes_on(tiny_qwen2):
    lines = [f"Tell me about item number {i} on the list" for i in range(30)]
    proc = cli("chat", "--model", tiny_qwen2, *GREEDY, "--system", "You are terse", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    replies, drops = expected_chat(awqinfer.load(tiny_qwen2), lines, system="You are terse")
    assert drops > 0  # the test is about a conversation longer than the context
    assert proc.stdout == "".join(reply + "\n" for reply in replies)
    notices = [line for line in proc.stderr.splitlines() if "outgrew the model's context" in line]
    assert len(notices) == drops and "(256 tokens" in notices[0] and "the system prompt stays" in notices[0]
    assert "Traceback" not in proc.stderr


def test_a_message_too_long_for_the_context_is_refused_and_the_chat_goes_on(tiny_qwen2):
    long_line = " ".join(f"word{i}" for i in range(400))
    proc = cli("chat", "--model", tiny_qwen2, *GREEDY, stdin=f"{long_line}\nHello there\n")
    assert proc.returncode == 0, proc.stderr
    llm = awqinfer.load(tiny_qwen2)
    reply = llm.run({"messages": [{"role": "user", "content": "Hello there"}], **PARAMS})["response"]
    assert proc.stdout == reply + "\n"  # the refused message is not part of the conversation
    refused = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(refused) == 1 and "prompt: got" in refused[0] and "at most 256" in refused[0]


def test_chat_commands_are_not_sent_to_the_model(tiny_qwen2):
    stdin = "/help\nHello there\n/reset\n/bogus and more\n//slash at the start\n/exit\nnever read\n"
    proc = cli("chat", "--model", tiny_qwen2, *GREEDY, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    llm = awqinfer.load(tiny_qwen2)
    first = llm.run({"messages": [{"role": "user", "content": "Hello there"}], **PARAMS})["response"]
    # after /reset the conversation starts afresh; "//" sends the line with one "/"
    second = llm.run({"messages": [{"role": "user", "content": "/slash at the start"}], **PARAMS})["response"]
    assert proc.stdout == f"{first}\n{second}\n"
    err = proc.stderr
    for command in ("/help", "/reset", "/exit"):
        assert f"  {command} " in err, command
    assert "awqinfer: conversation forgotten (2 messages)\n" in err
    assert "awqinfer: unknown command /bogus; /help lists the commands" in err


def test_reset_of_an_empty_conversation_says_so(tiny_qwen2):
    proc = cli("chat", "--model", tiny_qwen2, *GREEDY, "--threads", "1", "--system", "Be brief", stdin="/reset\n")
    assert proc.returncode == 0 and proc.stdout == ""
    assert "awqinfer: conversation forgotten (it was empty); the system prompt stays\n" in proc.stderr


def test_help_shows_defaults_ranges_and_chat_commands():
    run_help = " ".join(cli("run", "--help").stdout.split())  # argparse wraps lines where it likes
    assert "an integer >= 1, default 256" in run_help  # --max-tokens
    assert "a number in 0..5, default 0.6" in run_help  # --temperature
    assert "an integer in 1..50, default off" in run_help  # --top-k
    chat_help = " ".join(cli("chat", "--help").stdout.split())
    for text in ("/help", "/reset", "/exit", "//", "default 256", "default 0.6", "--verbose"):
        assert text in chat_help, text


def long_conversation(turns=40):
    messages = [{"role": "system", "content": "You are terse"}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"question number {i} about things"},
                     {"role": "assistant", "content": f"answer number {i}"}]
    return messages + [{"role": "user", "content": "and the last one?"}]


def test_run_truncate_is_opt_in_for_messages(tiny_qwen2, tmp_path):
    messages = long_conversation()
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"messages": messages, "max_tokens": 32}))
    refused = cli("run", "--model", tiny_qwen2, "--inputs", path, "--temperature", "0")
    assert refused.returncode == 2
    one_line_error(refused, "prompt: got", "at most 256")
    proc = cli("run", "--model", tiny_qwen2, "--inputs", "-", "--truncate", "--temperature", "0", "--max-tokens", "8",
               "--json", stdin=path.read_text())  # the flags override the file's fields
    assert proc.returncode == 0, proc.stderr
    llm = awqinfer.load(tiny_qwen2)
    kept, dropped = llm.fit_messages(messages, 8)
    assert json.loads(proc.stdout) == llm.run({"messages": kept, **PARAMS})
    notice = one_line_error(proc, f"dropped the oldest {dropped} messages")
    assert notice.startswith("awqinfer: the conversation outgrew")


@pytest.mark.parametrize("args,stdin,needles", [
    (["--truncate", "Hello"], None, ["--truncate", "a prompt is never cut"]),
    (["--inputs", "-", "Hello"], "{}", ["PROMPT and --inputs"]),
    ([], None, ["PROMPT or --inputs"]),
    (["--inputs", "-"], "{not json", ["--inputs -: not valid JSON"]),
    (["--inputs", "-"], "[1, 2]", ["--inputs -: got a JSON list"]),
    (["--inputs", "-", "--system", "x"], "{}", ["--raw and --system"]),
    (["--inputs", "-"], '{"messages": []}', ["messages: got an empty array"]),
])
def test_run_inputs_misuse_is_one_line_and_exit_2(tiny_qwen2, args, stdin, needles):
    proc = cli("run", "--model", tiny_qwen2, *args, stdin=stdin)
    assert proc.returncode == 2, proc.stderr
    one_line_error(proc, *needles)
    assert proc.stdout == ""
