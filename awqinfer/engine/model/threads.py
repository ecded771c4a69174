"""How many CPU threads the compiled kernels use: a sensible default and a checked choice.

Numba's parallel kernels run on one pool whose size is fixed when numba is imported
(``NUMBA_NUM_THREADS``, else the machine's cores). The number a call uses can be lowered,
per calling thread, with ``numba.set_num_threads``: Model.forward applies its own choice on
every call, so a model keeps its setting whichever thread (a CLI, a server's worker) runs it.

The default is the cores this process may run on (``os.sched_getaffinity``, which a
container, ``taskset`` or a Ray replica narrows), not the machine's count. On a busy machine
fewer threads can be much faster: a 2-thread step stalls whenever another process holds a
core (docs/PERFORMANCE.md, item 7).
"""

from __future__ import annotations

import os

import numba

from ...errors import InputError


def available_cores() -> int:
    """The CPUs this process may use (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def pool_size() -> int:
    """The most threads a kernel can use here: the size of Numba's pool."""
    return numba.config.NUMBA_NUM_THREADS


def resolve_threads(threads: int | None) -> int:
    """``threads`` checked against the pool, or the default (the available cores, capped by the pool)."""
    limit = pool_size()
    if threads is None:
        return min(available_cores(), limit)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise InputError(f"threads: got {threads!r}; allowed: an integer in 1..{limit} (Numba's thread pool; "
                         "set NUMBA_NUM_THREADS before starting to enlarge it)")
    return threads


def use_threads(threads: int) -> None:
    """Make the calling thread's parallel kernels use ``threads`` threads (cheap when unchanged)."""
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
