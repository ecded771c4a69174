"""The bridge between ``LLM.run``, a blocking generator, and the event loop that serves HTTP.

    Engine.start(llm, inputs)
      -> a place in the queue (QueueFull when max_waiting are already waiting), then a slot
      -> a worker thread runs llm.run({**inputs, "stream": True}, cancel=..., on_prefill=...)
         and posts each chunk to the loop (call_soon_threadsafe)
      -> a Generation: an async iterator over the engine's chunks; ``cancel()`` sets the run's
         cancel event, which the engine honours at its next prompt chunk or decode step

At most ``max_running`` generations run at once, each in a thread of its own (today the
engine interleaves their decode steps; a batching scheduler behind ``LLM.run`` would batch
them). A slot is given back when its thread has finished and the KV cache is freed, not
when the client leaves. This is the one module that knows generations run in threads:
pointing the server at another engine (a scheduler with a queue of its own) changes this file.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ..errors import InputError

_STARTED = object()  # posted once llm.run has accepted the inputs (its checks passed)
_END = object()  # posted after the last chunk


class QueueFull(Exception):
    """Every slot is busy and max_waiting requests are already waiting."""


class ShuttingDown(Exception):
    """The server is shutting down and takes no more generations."""


class Generation:
    """One request's generation as the loop sees it: the engine's chunks, timings, and ``cancel``.

    outcome, once ended: "stop" / "length" (the engine's finish reason), "cancelled", "invalid"
    (the engine refused the inputs) or "error"; ``cancel_reason`` says who cancelled.
    """

    def __init__(self, llm, loop: asyncio.AbstractEventLoop):
        self.llm = llm
        self.created = time.monotonic()
        self.first_chunk_at: float | None = None  # when the first text arrived
        self.ended_at: float | None = None
        self.prompt_tokens: int | None = None  # known once the prompt's first chunk is through
        self._prefilled = 0  # prompt tokens through the model so far
        self.usage: dict | None = None  # the engine's usage, when the generation finished
        self.outcome: str | None = None
        self.cancel_reason: str | None = None
        self._cancel = threading.Event()
        self._loop = loop
        self._items: asyncio.Queue = asyncio.Queue()
        self._done = False

    def cancel(self, reason: str = "client") -> None:
        """Stop the generation at the engine's next step (any thread); the first reason given is kept.

        A no-op once the generation has ended by itself.
        """
        if self.outcome is not None:
            return
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._cancel.set()

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        if self._done:
            raise StopAsyncIteration
        item = await self._items.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def _post(self, item) -> None:
        """From the worker thread: hand ``item`` to the loop."""
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._cancel.set()


class Engine:
    """Runs generations in worker threads: at most ``max_running`` at once, ``max_waiting`` queued."""

    def __init__(self, max_running: int = 4, max_waiting: int = 32, metrics=None):
        if max_running < 1 or max_waiting < 0:
            raise ValueError("max_running must be >= 1 and max_waiting >= 0")
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.metrics = metrics  # metrics.Metrics, or None
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._live: set[Generation] = set()
        self._threads = ThreadPoolExecutor(max_running, thread_name_prefix="awqinfer-generate")
        self._closing = False
        self._idle: asyncio.Event | None = None

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiters)

    @property
    def closing(self) -> bool:
        return self._closing

    def live_models(self) -> list:
        """The LLMs that running generations use (an evicted model may still be serving one)."""
        return list({id(g.llm): g.llm for g in self._live}.values())

    async def start(self, llm, inputs: dict) -> Generation:
        """Queue ``inputs`` for ``llm``; once a slot is free, start the run and return its Generation.

        Raises QueueFull or ShuttingDown before anything runs, and InputError when the engine's
        own checks refuse the inputs (a prompt longer than the context, a chat template that
        rejects the conversation). Cancelling the caller cancels the generation.
        """
        await self._acquire()
        if self._closing:  # the slot came after shutdown began
            self._release()
            raise ShuttingDown()
        gen = Generation(llm, asyncio.get_running_loop())
        self._live.add(gen)
        self._threads.submit(self._work, gen, inputs)
        try:
            first = await gen._items.get()
        except asyncio.CancelledError:
            gen.cancel()
            raise
        if isinstance(first, BaseException):
            raise first
        return gen

    async def shutdown(self, grace: float) -> None:
        """Take no more work; give running generations ``grace`` seconds, then cancel them and wait."""
        self._closing = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ShuttingDown())
        if self._live:
            try:
                await asyncio.wait_for(self._wait_idle(), timeout=max(grace, 0))
            except asyncio.TimeoutError:
                for gen in list(self._live):
                    gen.cancel("shutdown")
                await self._wait_idle()  # each stops within one prompt chunk or decode step
        self._threads.shutdown(wait=False)

    async def _wait_idle(self) -> None:
        while self._live:
            self._idle = asyncio.Event()
            await self._idle.wait()

    # --- slots ---------------------------------------------------------------------------

    async def _acquire(self) -> None:
        if self._closing:
            raise ShuttingDown()
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_waiting:
            if self.metrics:
                self.metrics.rejected.inc()
            raise QueueFull(f"{self.running} requests are running and {len(self._waiters)} waiting "
                            f"(--max-queue {self.max_waiting}); try again later")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # _release hands the slot over (running counted) or shutdown refuses it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()  # the slot came as the caller left: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        self.running -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.running += 1
                waiter.set_result(None)
                return

    # --- the worker thread ---------------------------------------------------------------

    def _work(self, gen: Generation, inputs: dict) -> None:
        """Run one generation in this worker thread, posting its chunks to the loop."""
        chunks = None
        try:
            chunks = gen.llm.run({**inputs, "stream": True}, cancel=gen._cancel,
                                 on_prefill=lambda done, total: self._on_prefill(gen, done, total))
            gen._post(_STARTED)
            for chunk in chunks:
                if gen.first_chunk_at is None and chunk["response"]:
                    gen.first_chunk_at = time.monotonic()
                if "usage" in chunk:
                    gen.usage, gen.outcome = chunk["usage"], chunk["finish_reason"]
                gen._post(chunk)
            if gen.outcome is None:
                gen.outcome = "cancelled"
            gen._post(_END)
        except InputError as e:
            gen.outcome = "invalid"
            gen._post(e)
        except BaseException as e:  # an engine bug: the request gets an error, the server lives on
            gen.outcome = "error"
            gen._post(e)
        finally:
            if chunks is not None:
                chunks.close()  # frees the KV cache now, in this thread
            gen.ended_at = time.monotonic()
            try:
                gen._loop.call_soon_threadsafe(self._finished, gen)
            except RuntimeError:  # the loop is gone (the process is exiting)
                pass

    def _on_prefill(self, gen: Generation, done: int, total: int) -> None:
        if self.metrics:
            self.metrics.prompt_tokens.inc(done - gen._prefilled)
        gen.prompt_tokens, gen._prefilled = total, done

    def _finished(self, gen: Generation) -> None:
        """On the loop, once a worker thread is done with ``gen``: free its slot, record it."""
        self._live.discard(gen)
        self._release()
        if self.metrics:
            self.metrics.finished(gen)
        if not self._live and self._idle is not None:
            self._idle.set()
