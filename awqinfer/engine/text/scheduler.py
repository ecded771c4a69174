"""Continuous batching: one engine thread steps every running sequence together.

Decode on a CPU is bound by reading the weights, so B sequences stepped together cost
little more than one (kernels/decode.py). A Scheduler owns its model on one engine
thread; ``LLM.run`` from any number of threads (and the HTTP server) submit to it:

    submit ──> waiting (FIFO, at most max_queue: else QueueFull)
               ──admit: room in the batch (max_batch) and in the KV budget──> running
    engine thread, one step:
      1. retire what was cancelled (a closed stream, a cancel event): its cache is freed at once
      2. admit waiting sequences while there is room
      3. one prefill chunk (PREFILL_CHUNK tokens) of the oldest sequence still reading its
         prompt: a long prompt never freezes the running streams for more than a chunk
      4. one decode step for every sequence past its prompt (Model.forward_batch)
      5. sample each sequence's token with its own parameters and RNG, hand it over, retire
         the finished

Each sequence keeps its own sampling state (generate.py's Sequence), and the compiled
step computes each row as it would alone, so a request gives the same tokens alone or in
a batch. The thread starts on the first request and ends after IDLE_SECONDS of nothing.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError, QueueFull
from ..model.forward import Model
from ..model.kv_budget import KV_BUDGET
from .generate import Sequence

DEFAULT_MAX_BATCH = 16  # sequences stepped together (8 already read the weights once for 8 tokens)
IDLE_SECONDS = 2.0  # the engine thread ends after this long with nothing to do
_DONE = object()  # end of a stream


@dataclass(eq=False)
class _Entry:
    """A submitted sequence, its output queue, and where it stands."""

    seq: Sequence
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # (token, reason), an error, or _DONE
    next_token: int | None = None  # sampled, to be fed in the next decode step
    finished: bool = False  # its last token or its error is handed over: retire it

    @property
    def over(self) -> bool:
        """Finished, or cancelled by its consumer: the engine retires it before the next step."""
        return self.finished or self.seq.cancel.is_set()


class TokenStream:
    """The consumer's side of a sequence: iterate for (token, finish_reason); close() cancels it.

    Dropping the stream (garbage) cancels it too, so an abandoned request never keeps running.
    """

    def __init__(self, scheduler: "Scheduler", entry: _Entry):
        self._scheduler, self._entry, self._ended = scheduler, entry, False

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, str | None]:
        if not self._ended and self._entry.seq.cancel.is_set():  # the consumer cancelled: nothing made since
            self.close()
        if self._ended:
            raise StopIteration
        item = self._entry.out.get()
        if item is _DONE:
            self._ended = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if item[1] is not None:
            self._ended = True
        return item

    def close(self) -> None:
        """Stop the generation: the engine retires it within one step and frees its cache."""
        self._ended = True
        self._scheduler.cancel(self._entry)

    def __del__(self):
        if not self._ended:
            self.close()


def check_bounds(max_batch, max_queue) -> None:
    """Refuse a batch size below 1 or a queue bound below 0 (None: the defaults)."""
    for name, value, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise InputError(f"{name}: got {value!r}; allowed: an integer >= {low}")


class Scheduler:
    """Runs submitted sequences of one model in batches on one engine thread."""

    def __init__(self, model: Model, max_batch: int | None = None, max_queue: int | None = None):
        check_bounds(max_batch, max_queue)
        self.model = model
        self.max_batch = max_batch or DEFAULT_MAX_BATCH
        self.max_queue = max_queue  # None: unbounded
        self._lock = threading.Condition()
        self._waiting: deque[_Entry] = deque()
        self._running: list[_Entry] = []
        self._thread: threading.Thread | None = None

    @property
    def counts(self) -> tuple[int, int]:
        """(running, waiting) sequences now."""
        with self._lock:
            return len(self._running), len(self._waiting)

    @property
    def engine_running(self) -> bool:
        """Whether the engine thread is up (it ends IDLE_SECONDS after its last sequence, and with it its
        OpenMP threads: a process should have one thread running parallel kernels at a time)."""
        with self._lock:
            return self._thread is not None

    def submit(self, seq: Sequence) -> TokenStream:
        """Queue ``seq``; its tokens come out of the returned stream as the engine makes them.

        Raises InputError at once when the sequence alone needs more KV memory than the whole
        budget, QueueFull when max_queue sequences are already waiting.
        """
        KV_BUDGET.check_fits(seq.kv_bytes, f"a request of {seq.capacity} positions (prompt + max_tokens)")
        entry = _Entry(seq)
        with self._lock:
            # a place free in the batch takes the next waiting sequence at once: it does not count as queued
            room = max(0, self.max_batch - len(self._running))
            if self.max_queue is not None and len(self._waiting) >= self.max_queue + room:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max_queue {self.max_queue})")
            self._waiting.append(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="awqinfer-engine", daemon=True)
                self._thread.start()
            self._lock.notify_all()
        return TokenStream(self, entry)

    def cancel(self, entry: _Entry) -> None:
        """Mark a sequence cancelled; the engine drops it before its next step."""
        entry.seq.cancel.set()
        with self._lock:
            self._lock.notify_all()

    # --- the engine thread -------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as error:  # a bug in the engine itself: nobody may wait forever
            with self._lock:
                for entry in [*self._running, *self._waiting]:
                    entry.seq.close()
                    entry.out.put(error)
                self._running.clear()
                self._waiting.clear()
                self._thread = None
            raise

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._retire(lambda e: e.over)
                self._admit()
                if not self._running:
                    if not self._lock.wait_for(lambda: self._running or self._waiting, IDLE_SECONDS):
                        self._thread = None  # idle: end (submit starts a new thread)
                        return
                    if not self._running:  # waiting for room in the KV budget
                        self._lock.wait(0.05)
                    continue
                batch = list(self._running)
            self._step(batch)

    def _admit(self) -> None:
        """Drop the waiting sequences their consumers cancelled (at once, even while the batch is full),
        then move waiting sequences to running while the batch and the KV budget have room (FIFO)."""
        for entry in [e for e in self._waiting if e.seq.cancel.is_set()]:
            self._waiting.remove(entry)
            entry.out.put(_DONE)
        while self._waiting and len(self._running) < self.max_batch:
            entry = self._waiting[0]
            if not KV_BUDGET.can_reserve(entry.seq.kv_bytes):
                return
            try:
                entry.seq.start()
            except InputError:  # another model's scheduler took the room first: wait for more
                return
            except Exception as error:  # noqa: BLE001 - this request fails, the engine goes on
                self._waiting.popleft().out.put(error)
                continue
            self._running.append(self._waiting.popleft())

    def _retire(self, finished) -> None:
        """Drop running sequences for which ``finished(entry)`` holds; free their caches at once."""
        done = [e for e in self._running if finished(e)]
        for entry in done:
            self._running.remove(entry)
            entry.seq.close()
            entry.out.put(_DONE)
        if done:
            self.model.forget_caches()

    def _step(self, batch: list[_Entry]) -> None:
        """One prefill chunk of the oldest sequence still reading its prompt, then one decode step."""
        reading = [e for e in batch if e.seq.reading_prompt and not e.over]
        if reading:
            self._guarded([reading[0]], lambda: self._prefill(reading[0]))
        decoding = [e for e in batch if e.next_token is not None and not e.over]
        if decoding:
            self._guarded(decoding, lambda: self._decode(decoding))
        with self._lock:
            self._retire(lambda e: e.over)

    def _prefill(self, entry: _Entry) -> None:
        if entry.seq.prefill_chunk():
            self._emit(entry)

    def _decode(self, entries: list[_Entry]) -> None:
        tokens = np.array([e.next_token for e in entries], np.int64)
        adapters = [e.seq.adapter for e in entries]  # each row its own LoRA adapter, or none
        logits = self.model.forward_batch(tokens, [e.seq.cache for e in entries],
                                          adapters=adapters if any(adapters) else None)
        for entry, row in zip(entries, logits):
            entry.seq.logits = row
            self._emit(entry)

    def _emit(self, entry: _Entry) -> None:
        """Sample the sequence's next token and hand it over; a last token ends the sequence."""
        token, reason = entry.seq.sample()
        entry.out.put((token, reason))
        entry.next_token = token if reason is None else None
        if reason is not None:
            entry.finished = True  # retired at the end of this step

    def _guarded(self, entries: list[_Entry], work) -> None:
        """Run ``work``; an error ends the sequences it concerned (each consumer gets it), not the engine."""
        try:
            work()
        except Exception as error:  # noqa: BLE001 - handed to the consumers, who raise it
            for entry in entries:
                entry.out.put(error)
                entry.finished = True
