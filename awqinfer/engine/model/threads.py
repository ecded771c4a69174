"""How many CPU threads the compiled kernels use: a sensible default and a checked choice.

Numba's parallel kernels run on one pool whose size is fixed when numba is imported
(``NUMBA_NUM_THREADS``, else the machine's cores). The number a call uses can be lowered,
per calling thread, with ``numba.set_num_threads``: Model.forward applies its own choice on
every call, so a model keeps its setting whichever thread (a CLI, a server's worker) runs it.

The most it uses by default is the cores this process may run on (``os.sched_getaffinity``,
which a container, ``taskset`` or a Ray replica narrows), not the machine's count. On a busy
machine fewer threads can be much faster: a decode step synchronises its threads ~150 times,
and a 2-thread step stalls whenever another process holds a core (docs/PERFORMANCE.md,
item 7; measured: llama.cpp 44 tokens/s with 2 threads beside one busy process, 100 with 1).
So with no explicit count a model does not fix one: a ``ThreadChooser`` times its decode
steps and keeps the fastest count, re-measuring every so often as the machine's load changes.
An explicit ``threads=N`` is always obeyed.
"""

from __future__ import annotations

import os
import threading
from statistics import median

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
    """Make the calling thread's parallel kernels use ``threads`` threads (free when unchanged).

    It remembers the count it last set from this thread rather than ask Numba:
    ``numba.get_num_threads`` is a ctypes call, which releases the GIL at every decode step
    and lets another thread (a stream's consumer) hold the engine up there. A count set
    around it with ``numba.set_num_threads`` in the same thread goes unseen (speed changes,
    never the output).
    """
    if getattr(_last_set, "threads", None) != threads:
        numba.set_num_threads(threads)
        _last_set.threads = threads


_last_set = threading.local()  # .threads: what use_threads last set from this thread


class ThreadChooser:
    """The thread count for the next decode step, chosen by timing steps: the fastest candidate wins.

    Candidates are ``most`` threads and 1 (and ``most // 2`` on larger machines). A round times
    TRIALS steps of each candidate, interleaved so that the load and the context length change
    alike for all; until the next round the candidate with the lowest median step time is used.

    A round's slower candidates cost time (on this 2-core machine, three 1-thread steps in every
    70 were ~2% of a stream), so rounds grow sparse while they keep agreeing: after a round that
    re-elects the winner by a clear margin (every other candidate CLEAR times slower) the gap to
    the next doubles, up to EXPLORE_MOST steps; any other outcome brings it back to EXPLORE_EVERY.
    A change of load is still caught at once: TRIALS steps in a row SURPRISE times slower than
    the winner's median start a round (a busy process makes 2-thread steps stall, item 16 of
    docs/PERFORMANCE.md), and steps of another batch size than the last round's wait at most
    EXPLORE_EVERY steps for a round of their own.
    """

    EXPLORE_EVERY = 64  # decode steps between two rounds while the choice is close or changing
    EXPLORE_MOST = 512  # ... at most, while rounds agree by a clear margin
    CLEAR = 1.25  # a winner's margin that counts as clear: the others' medians at least this many times its own
    SURPRISE = 2.0  # winner's steps this many times its median, TRIALS in a row: the load changed
    TRIALS = 3  # timed steps per candidate in a round

    def __init__(self, most: int):
        self.candidates = sorted({most, 1} | ({most // 2} if most >= 4 else set()), reverse=True)
        self.best = most  # until measured: every core
        self._plan: list[int] = []  # the round's remaining steps
        self._times: dict[int, list[float]] = {}
        self.every = self.EXPLORE_EVERY  # steps from one round to the next, for steps of the round's batch size
        self._since_round = self.EXPLORE_EVERY  # the first steps start a round
        self._batch = 1  # the batch size of the last round's steps
        self._step_batch = 1  # the batch size of the step being run
        self._median = 0.0  # the winner's median step time in the last round
        self._slow = 0  # the winner's steps in a row slower than SURPRISE times that

    def next(self, batch: int = 1) -> int:
        """Threads for the next decode step of ``batch`` sequences (pass its time to ``record``).

        Steps of different batch sizes take different times, so a round whose batch size changes
        starts again: its candidates are compared on equal work.
        """
        self._step_batch = batch
        if self._plan and batch != self._batch:
            self._plan = []
            self._since_round = self.EXPLORE_EVERY
        every = self.every if batch == self._batch else self.EXPLORE_EVERY
        if not self._plan and self._since_round >= every and len(self.candidates) > 1:
            self._plan = self.candidates * self.TRIALS
            self._times = {n: [] for n in self.candidates}
            self._since_round = 0
            self._batch = batch
        return self._plan[0] if self._plan else self.best

    def record(self, threads: int, seconds: float) -> None:
        """The step run with ``threads`` (as ``next`` said) took ``seconds``."""
        self._since_round += 1
        if self._plan and self._plan[0] == threads:
            self._plan.pop(0)
            self._times[threads].append(seconds)
            if not self._plan:
                self._elect()
        elif threads == self.best and self._step_batch == self._batch and self._median > 0:
            self._slow = self._slow + 1 if seconds > self.SURPRISE * self._median else 0
            if self._slow >= self.TRIALS:  # the load changed: measure again now
                self.every, self._since_round, self._slow = self.EXPLORE_EVERY, self.EXPLORE_EVERY, 0

    def _elect(self) -> None:
        """End a round: its fastest candidate wins, and the gap to the next round follows its margin."""
        medians = {n: median(self._times[n]) for n in self.candidates}
        winner = min(self.candidates, key=medians.__getitem__)
        clear = all(medians[n] >= self.CLEAR * medians[winner] for n in self.candidates if n != winner)
        self.every = min(2 * self.every, self.EXPLORE_MOST) if clear and winner == self.best else self.EXPLORE_EVERY
        self.best, self._median, self._slow = winner, medians[winner], 0
