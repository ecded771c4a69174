"""A real ``awqinfer serve`` for tests: a subprocess on a free loopback port, and small HTTP helpers.

Tests speak real HTTP to it (requests, curl, OpenAI's client, a browser); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

START_TIMEOUT = 180  # seconds: loading kernels from a cold Numba cache on a busy machine

# A generation no machine finishes while a test acts on it (a Stop, a SIGTERM, a client that leaves):
# the tiny model decodes ~900 tokens/s on a quiet core here, so 3000 tokens were over in 3 s, before
# a 5 s shutdown grace ran out. LONG_TOKENS takes over a minute; tests cut it long before its end.
LONG_POSITIONS = 1 << 16
LONG_TOKENS = 60_000


def make_long_model(directory: Path) -> Path:
    """The tiny Qwen2 checkpoint with room for LONG_TOKENS: greedy, its story never reaches EOS."""
    from checkpoints import make_model

    return make_model(directory, "qwen2", max_positions=LONG_POSITIONS)


class Server:
    """``python -m awqinfer serve --port 0 ARGS`` in ``cwd``; ``url`` once it answers /health."""

    def __init__(self, *args, cwd: Path, env: dict | None = None):
        self.log_path = Path(cwd) / f"server-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "awqinfer", "serve", "--port", "0", *map(str, args)],
                                     cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})})
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            found = re.search(r"serving on (http://\S+) ", self.log())
            url = url or (found.group(1) if found else None)
            if url:
                try:
                    if requests.get(url + "/health", timeout=5).status_code == 200:
                        return url
                except requests.ConnectionError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start within {START_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server and wait for it to exit; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the server did not exit within {timeout} s of {sig!r}:\n{self.log()}")
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def require_tool(*names: str, install: str) -> str:
    """The path of the first of ``names`` on PATH; missing, a skip, or a failure in CI (.ci/run installs it)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = f"{names[0]} is not installed (`{install}`)"
    if os.environ.get("AWQINFER_CI") == "1":
        pytest.fail(message + "; .ci/run installs it")
    pytest.skip(message)


def sse_events(response) -> list:
    """The ``data:`` payloads of an SSE response, JSON decoded, up to and including the string '[DONE]'."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: "):]
        events.append("[DONE]" if data == "[DONE]" else json.loads(data))
        if data == "[DONE]":
            break
    return events


def first_line(response) -> bytes:
    """The first non-empty line of a streamed response, leaving the stream open.

    The line iterator is kept on the response: a discarded ``iter_lines`` generator closes the
    connection, which the server rightly takes as the client leaving.
    """
    if not hasattr(response, "lines"):
        response.lines = response.iter_lines()
    return next(line for line in response.lines if line)


def metric(url: str, name: str, headers: dict | None = None) -> float:
    """One sample's value from GET /metrics (``name`` with its labels, as the text shows it)."""
    text = requests.get(url + "/metrics", headers=headers, timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def wait_for(condition, timeout: float, what: str):
    """Poll ``condition()`` until it is truthy (and return it); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
