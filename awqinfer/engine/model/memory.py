"""How much memory this process can still take, asked before a large allocation.

A model too big for the machine must be a clear error before loading starts, never a
MemoryError halfway or the kernel's OOM killer ending the process. The answer is the least
of what can be read here:

- the system's MemAvailable (/proc/meminfo: free memory plus reclaimable caches; swap not
  counted, a model served from swap is no use);
- the cgroup's limit minus its use (containers: v2 memory.max, v1 memory.limit_in_bytes);
- the address space RLIMIT_AS leaves (ulimit -v) above the process's current size;
- elsewhere, the free physical pages ``os.sysconf`` reports.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from ...errors import CheckpointError

_CGROUPS = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _proc_kib(path: str, key: str) -> int | None:
    """A 'Key:  N kB' line of a /proc file, in bytes."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _number(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):  # missing, or "max": no limit
        return None


def available_bytes() -> int | None:
    """Bytes this process can still allocate (module docstring), or None where nothing says."""
    found = [_proc_kib("/proc/meminfo", "MemAvailable")]
    for limit_file, used_file in _CGROUPS:
        limit, used = _number(limit_file), _number(used_file)
        if limit is not None and used is not None and limit < 1 << 60:  # v1 writes 2**63 for "no limit"
            found.append(max(0, limit - used))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    size = _proc_kib("/proc/self/status", "VmSize")
    if soft != resource.RLIM_INFINITY and size is not None:
        found.append(max(0, soft - size))
    if found[0] is None:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    known = [n for n in found if n is not None]
    return min(known) if known else None


def ensure_memory(need: int, what: str) -> None:
    """Refuse, as a CheckpointError, to allocate ``need`` bytes for ``what`` when they are not there."""
    free = available_bytes()
    if free is not None and need > free:
        raise CheckpointError(f"{what} need {need / 2**30:.2f} GiB of memory once loaded and this process "
                              f"can take {free / 2**30:.2f} GiB; free memory, or load a smaller or more "
                              "quantized model (AWQ, or int8)")
