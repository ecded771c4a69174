"""Run a command and write down its own peak RSS and when it was started: ``python spawn.py REPORT CMD...``.

Why a launcher. The peak RSS that ``os.wait4`` reports for a child counts the memory of whoever
spawned it: at ``exec`` Linux keeps the replaced address space's high-water mark, and a forked (or
vforked) child's address space is its parent's. A benchmark process that had just built the
default model in-process (857 MB) read 857 MB for every child it ran, llama-bench included. This
launcher is a fresh Python of ~10 MB that spawns the command itself, so the figure is the
command's own. It writes "START PEAK" to REPORT: the CLOCK_MONOTONIC second just before the spawn
(comparable with ``time.monotonic()`` in the caller, so a time to first output excludes the
launcher's own start) and the command's peak RSS in bytes; it exits with the command's status.
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    report, cmd = argv[0], argv[1:]
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)  # exec failed: the caller sees status 127, as a shell's
    _, status, usage = os.wait4(pid, 0)
    with open(report, "w") as f:
        f.write(f"{start!r} {usage.ru_maxrss * 1024}\n")
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
