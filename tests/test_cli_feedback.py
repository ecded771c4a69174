"""What the CLI tells a user about a generation, in real subprocesses: ``-v`` statistics, the hint
for a reply cut short (on a terminal only), the prefill progress bar, and the note on a first run
that compiles the kernels (a cold Numba cache: NUMBA_CACHE_DIR pointing at an empty folder)."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading

from checkpoints import make_model
from test_cli import COMPILE_NOTE, cli

import awqinfer
from awqinfer.cli.generation import PrefillProgress, Timing

GREEDY = ["--max-tokens", "8", "--temperature", "0"]
STATS = re.compile(r"^awqinfer: (\d+) prompt tokens, first token after [\d.]+ s \(\d+ prompt tokens/s\), "
                   r"[\d.]+ tokens/s decoding, (\d+) completion tokens, finish reason: (stop|length)$")


def on_terminal(*args, stream="stdout", env=None, timeout=600):
    """``python -m awqinfer ARGS`` with ``stream`` on a pseudo-terminal: (exit status, what the terminal
    showed, the other stream's text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100, as a window has
    other = "stderr" if stream == "stdout" else "stdout"
    proc = subprocess.Popen([sys.executable, "-m", "awqinfer", *map(str, args)], stdin=subprocess.DEVNULL,
                            **{stream: slave, other: subprocess.PIPE}, env={**os.environ, **(env or {})})
    os.close(slave)
    shown = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        reader.join(10)
        os.close(master)
    return proc.returncode, b"".join(shown).decode(errors="replace"), (err if other == "stderr" else out).decode()


def test_verbose_reports_tokens_timing_and_finish_reason(tiny_qwen2):
    expect = awqinfer.load(tiny_qwen2).run({"prompt": "Hello, world", "max_tokens": 8, "temperature": 0})
    for extra in ([], ["--json"]):
        proc = cli("run", "--model", tiny_qwen2, *GREEDY, "-v", *extra, "Hello, world")
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith(COMPILE_NOTE)]
        assert len(lines) == 1, proc.stderr
        prompt, completion, reason = STATS.match(lines[0]).groups()
        assert (int(prompt), int(completion), reason) == (expect["usage"]["prompt_tokens"],
                                                          expect["usage"]["completion_tokens"], expect["finish_reason"])
    assert json.loads(proc.stdout) == expect  # -v changes nothing on stdout
    quiet = cli("run", "--model", tiny_qwen2, *GREEDY, "Hello, world")
    assert [line for line in quiet.stderr.splitlines() if not line.startswith(COMPILE_NOTE)] == []


def test_a_reply_cut_by_max_tokens_says_so_on_a_terminal_only(tiny_qwen2):
    expect = awqinfer.load(tiny_qwen2).run({"prompt": "Hello", "max_tokens": 3, "temperature": 0})
    assert expect["finish_reason"] == "length"
    args = ("run", "--model", tiny_qwen2, "--max-tokens", "3", "--temperature", "0", "Hello")
    status, shown, err = on_terminal(*args)
    assert status == 0, err
    assert shown.replace("\r\n", "\n") == expect["response"] + "\n"
    assert err == "awqinfer: the reply was cut at max_tokens (3); --max-tokens N allows a longer one\n"
    piped = cli(*args)  # a pipe or a file gets the text alone
    assert piped.returncode == 0 and piped.stderr == ""


def test_a_reply_cut_by_the_full_context_names_the_context(tiny_qwen2):
    llm = awqinfer.load(tiny_qwen2)
    prompt = " ".join(f"w{i}" for i in range(50))
    expect = llm.run({"prompt": prompt, "max_tokens": 200, "temperature": 0})
    assert expect["finish_reason"] == "length" and expect["usage"]["completion_tokens"] < 200
    assert expect["usage"]["total_tokens"] == 256 + 1  # the cache is full (the last token is never fed back)
    status, _, err = on_terminal("run", "--model", tiny_qwen2, "--max-tokens", "200", "--temperature", "0", prompt)
    assert status == 0
    assert "awqinfer: the reply was cut: prompt and reply filled the model's context (256 tokens)" in err


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_prefill_bar_appears_only_when_the_prompt_is_projected_to_be_slow(capsys):
    clock = Clock()
    slow = PrefillProgress(Timing(start=0.0), show=True, clock=clock)
    clock.now = 0.6
    slow(256, 1024)  # 0.6 s for a quarter: 2.4 s projected
    assert slow.bar is not None and slow.bar.n == 256
    clock.now = 1.2
    slow(512, 1024)
    assert slow.bar.n == 512
    clock.now = 2.4
    slow(1024, 1024)
    assert slow.bar is None and slow.timing.prompt_done == 2.4
    assert "reading the prompt" in capsys.readouterr().err
    fast = PrefillProgress(Timing(start=0.0), show=True, clock=clock)
    clock.now = 0.4
    fast(256, 1024)  # 1.6 s projected
    assert fast.bar is None
    hidden = PrefillProgress(Timing(start=0.0), show=False, clock=clock)
    clock.now = 10.0
    hidden(256, 1024)
    assert hidden.bar is None


def test_a_first_run_says_it_compiles_and_shows_the_slow_prefill(tmp_path):
    """A cold kernel cache: the compile note, then a prompt whose first chunk waits on the compiler."""
    model = make_model(tmp_path / "model", "qwen2", max_positions=2048)
    prompt = " ".join(f"word{i}" for i in range(250))
    assert 700 < len(awqinfer.load(model).tokenizer.encode(prompt)) < 2000  # three chunks or more
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}  # nothing compiled yet
    args = ("run", "--model", model, "--max-tokens", "4", "--temperature", "0", prompt)
    status, shown, out = on_terminal(*args, stream="stderr", env=env)
    assert status == 0, shown
    assert "awqinfer: compiling the kernels once (Numba; about" in shown
    assert "reading the prompt" in shown
    assert out
    again = cli(*args, env=env)  # the same cache, now warm: no note
    assert again.returncode == 0 and again.stdout == out
    assert "compiling" not in again.stderr
