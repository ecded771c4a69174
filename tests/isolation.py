"""Run a test case in its own process with an address-space limit and a wall-clock timeout.

A regression in a resource limit must fail its test, not take the machine down. ``Isolated``
starts one worker process (``python tests/isolation.py``) that imports awqinfer once and then
forks a child per case: the child lowers RLIMIT_AS to its current size plus ``memory`` (so an
allocation past it is a MemoryError in the child, never an OOM kill), runs ``module.function(*args)``
and reports back; the worker kills a child that runs past ``seconds``. The worker itself never
runs a kernel, so no thread pool exists when it forks.

Each case reports how it ended ("returned", "raised", "timeout" or "died"), the exception's type
names and message, its wall time, and how far its resident memory grew above where it started.
Linux only (fork, /proc).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


class Isolated:
    """A worker process that runs cases each in a forked, limited child (module docstring)."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__))], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=TESTS.parent)

    def run(self, function: str, *args, memory_mb: int = 512, seconds: float = 20.0) -> dict:
        """Run ``function`` ('module:name', a module under tests/) on JSON ``args`` in a limited child."""
        return self._ask({"function": function, "args": list(args), "memory_mb": memory_mb, "seconds": seconds})

    def warm(self, function: str, *args) -> dict:
        """Run ``function`` in the worker itself, unlimited, so that every later child inherits what it
        loaded (Numba's cached code, say). It must start no threads: the worker forks afterwards."""
        return self._ask({"function": function, "args": list(args), "warm": True})

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the isolation worker exited ({self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def isolated():
    """One worker for a test module (import this fixture into the module)."""
    worker = Isolated()
    yield worker
    worker.close()


def _status(key: str) -> int:
    """A /proc/self/status figure in kB (VmSize, VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _child(request: dict, out) -> None:
    """In the forked child: limit, run, report one JSON line, exit without cleanup."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak resident size, to now
    except OSError:
        pass
    start_rss = _status("VmRSS")
    if not request.get("warm"):
        limit = _status("VmSize") * 1024 + (request["memory_mb"] << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    t0 = time.monotonic()
    try:
        module, name = request["function"].split(":")
        value = getattr(importlib.import_module(module), name)(*request["args"])
        report = {"status": "returned", "value": value}
    except BaseException as e:  # noqa: BLE001 - every way a case can end is reported, none escapes
        report = {"status": "raised", "types": [c.__name__ for c in type(e).__mro__], "message": str(e)[:4000],
                  "traceback": traceback.format_exc(limit=-8)[-4000:]}
    report["seconds"] = time.monotonic() - t0
    report["grew_mb"] = max(0, _status("VmHWM") - start_rss) / 1024
    try:
        text = json.dumps(report)
    except (TypeError, ValueError):
        text = json.dumps({**report, "value": repr(report.get("value"))})
    out.write(text + "\n")
    out.flush()


def _serve() -> None:
    import awqinfer  # noqa: F401 - imported once here, shared by every forked child

    for line in sys.stdin:
        request = json.loads(line)
        if request.get("warm"):
            _child(request, sys.stdout)
            continue
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                _child(request, os.fdopen(write, "w"))
            finally:
                os._exit(0)
        os.close(write)
        deadline = time.monotonic() + request["seconds"]
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        with os.fdopen(read) as r:
            answer = r.read().strip()
        if not answer:
            answer = json.dumps({"status": "timeout" if time.monotonic() > deadline else "died",
                                 "seconds": request["seconds"]})
        sys.stdout.write(answer.splitlines()[-1] + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
