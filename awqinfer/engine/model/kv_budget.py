"""The process-wide KV memory budget: how many bytes of KV cache all live sequences may reserve.

A sequence reserves, when its cache is made, the bytes its largest possible length needs
(prompt + max_tokens, capped at the model's context), and gives them back when the cache
is freed. Memory itself is allocated only as the sequence grows (cache.py), so the
reservation bounds the worst case while RSS follows the tokens actually generated.
Reserving the worst case up front means a running sequence can never run out of KV
memory half way (no preemption is needed); the price is that admission is conservative.

The scheduler waits for room (``reserve(..., wait=True)``); a single request whose own
need exceeds the whole budget is refused at once with an InputError.
"""

from __future__ import annotations

import threading

from ...errors import InputError
from .memory import available_bytes

DEFAULT_SHARE = 0.5  # of the memory available (memory.py) when the budget is first used
FALLBACK_BYTES = 4 * 1024**3  # where nothing says how much memory there is


def parse_bytes(text: str) -> int:
    """'2GB', '512MiB', '1.5G', '1000000' -> bytes; an InputError names anything else."""
    units = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 1000**2, "MB": 1000**2, "MIB": 1024**2,
             "G": 1000**3, "GB": 1000**3, "GIB": 1024**3, "T": 1000**4, "TB": 1000**4, "TIB": 1024**4}
    s = str(text).strip().upper().replace(" ", "")
    number = s.rstrip("KMGTIB")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not value > 0 or value * units[unit] > 2**62:
        raise InputError(f"kv_budget: got {text!r}; allowed: a size such as 4GB, 512MiB or a number of bytes")
    return int(value * units[unit])


class KVBudget:
    """Reservations of KV bytes against a limit, shared by every sequence of the process."""

    def __init__(self, limit: int | None = None):
        self._limit = limit
        self.reserved = 0
        self._room = threading.Condition()

    @property
    def limit(self) -> int:
        """The budget in bytes (default: DEFAULT_SHARE of the memory available when first asked)."""
        if self._limit is None:
            self._limit = int((available_bytes() or FALLBACK_BYTES) * DEFAULT_SHARE)
        return self._limit

    def set_limit(self, limit: int | str) -> None:
        """A new budget (bytes, or a size string); waiting reservations are re-checked."""
        value = parse_bytes(limit) if isinstance(limit, str) else limit
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"kv_budget: got {limit!r}; allowed: a positive number of bytes or a size such as 4GB")
        with self._room:
            self._limit = value
            self._room.notify_all()

    def check_fits(self, nbytes: int, what: str) -> None:
        """Refuse at once a reservation larger than the whole budget: waiting would never end."""
        if nbytes > self.limit:
            raise InputError(f"{what}: needs {nbytes / 2**20:.1f} MiB of KV cache, more than the whole KV budget of "
                             f"{self.limit / 2**20:.1f} MiB (raise it with kv_budget= or --kv-budget, or ask for fewer "
                             "tokens)")

    def can_reserve(self, nbytes: int) -> bool:
        """Whether ``nbytes`` fit now (a scheduler's admission test; the reservation itself may still race)."""
        with self._room:
            return self.reserved + nbytes <= self.limit

    def reserve(self, nbytes: int, what: str, wait: bool = False, timeout: float | None = None) -> bool:
        """Take ``nbytes`` from the budget; with ``wait`` block until there is room (False on timeout)."""
        self.check_fits(nbytes, what)
        with self._room:
            if wait:
                if not self._room.wait_for(lambda: self.reserved + nbytes <= self.limit, timeout):
                    return False
            elif self.reserved + nbytes > self.limit:
                raise InputError(f"{what}: needs {nbytes / 2**20:.1f} MiB of KV cache but only "
                                 f"{(self.limit - self.reserved) / 2**20:.1f} MiB of the {self.limit / 2**20:.1f} MiB "
                                 "KV budget are free now")
            self.reserved += nbytes
            return True

    def release(self, nbytes: int) -> None:
        """Give ``nbytes`` back and wake whoever waits for room."""
        with self._room:
            self.reserved -= nbytes
            self._room.notify_all()


KV_BUDGET = KVBudget()  # the process's one budget
