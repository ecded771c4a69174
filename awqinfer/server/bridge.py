"""The bridge between ``LLM.run``, a blocking generator, and the event loop that serves HTTP.

    Engine.start(llm, inputs)
      -> a thread calls llm.run({**inputs, "stream": True}, cancel=..., on_prefill=...): the
         inputs are checked and the sequence is queued on the model's Scheduler (QueueFull when
         its --max-queue is reached), which batches it with every other running sequence
      -> the thread waits for the chunks and posts each to the loop (call_soon_threadsafe)
      -> a Generation: an async iterator over the engine's chunks; ``cancel()`` sets the run's
         cancel event, which the scheduler honours before its next step (a prompt chunk or a
         decode step), freeing the sequence's KV cache

The threads here only wait on the scheduler's queues; the model runs on the scheduler's
engine thread, so no lock or queue of this module ever serializes two requests. This is the
one module that knows how generations are driven.
"""

from __future__ import annotations

import asyncio
import threading
import time

from ..errors import InputError, QueueFull

_STARTED = object()  # posted once llm.run has accepted the inputs (its checks passed)
_END = object()  # posted after the last chunk


class ShuttingDown(Exception):
    """The server is shutting down and takes no more generations."""


class Generation:
    """One request's generation as the loop sees it: the engine's chunks, timings, and ``cancel``.

    outcome, once ended: "stop" / "length" / "tool_calls" (the engine's finish reason), "cancelled", "invalid"
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
    """Starts generations on their models' schedulers and follows them until they end.

    Queueing and batching are the scheduler's (``LLM.run``): this class keeps no queue and no
    limit of its own. It only tracks the live generations, for shutdown and the metrics.
    """

    def __init__(self, metrics=None):
        self.metrics = metrics  # metrics.Metrics, or None
        self._live: set[Generation] = set()
        self._closing = False
        self._idle: asyncio.Event | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    def live_models(self) -> list:
        """The LLMs that running generations use (an evicted model may still be serving one)."""
        return list({id(g.llm): g.llm for g in self._live}.values())

    async def start(self, llm, inputs: dict, options: dict | None = None) -> Generation:
        """Submit ``inputs`` to ``llm``'s scheduler and return its Generation once it is queued there.

        ``options``: more keyword arguments of ``llm.run`` (tool_choice, parallel_tool_calls).

        Raises QueueFull (the scheduler's queue is full) or ShuttingDown before anything runs,
        and InputError when the engine's own checks refuse the inputs (a prompt longer than the
        context, a chat template that rejects the conversation). Cancelling the caller cancels
        the generation.
        """
        if self._closing:
            raise ShuttingDown()
        gen = Generation(llm, asyncio.get_running_loop())
        self._live.add(gen)
        threading.Thread(target=self._work, args=(gen, inputs, options or {}), name="awqinfer-stream",
                         daemon=True).start()
        try:
            first = await gen._items.get()
        except asyncio.CancelledError:
            gen.cancel()
            raise
        if isinstance(first, BaseException):
            if isinstance(first, QueueFull) and self.metrics:
                self.metrics.rejected.inc()
            raise first
        return gen

    async def shutdown(self, grace: float) -> None:
        """Take no more work; give running generations ``grace`` seconds, then cancel them and wait."""
        self._closing = True
        if self._live:
            try:
                await asyncio.wait_for(self._wait_idle(), timeout=max(grace, 0))
            except asyncio.TimeoutError:
                for gen in list(self._live):
                    gen.cancel("shutdown")
                await self._wait_idle()  # each stops within one prompt chunk or decode step

    async def _wait_idle(self) -> None:
        while self._live:
            self._idle = asyncio.Event()
            await self._idle.wait()

    # --- the generation's thread ---------------------------------------------------------

    def _work(self, gen: Generation, inputs: dict, options: dict) -> None:
        """Submit one generation and pass its chunks to the loop as the scheduler makes them.

        This thread only waits: the model runs on the scheduler's engine thread, batched with
        every other generation of the same model.
        """
        chunks = None
        try:
            chunks = gen.llm.run({**inputs, "stream": True}, cancel=gen._cancel,
                                 on_prefill=lambda done, total: self._on_prefill(gen, done, total), **options)
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
        except (InputError, QueueFull) as e:
            gen.outcome = "invalid" if isinstance(e, InputError) else "rejected"
            gen._post(e)
        except BaseException as e:  # a broken template, an engine bug: this request fails, the server lives on
            gen.outcome = "error"
            gen._post(e)
        finally:
            if chunks is not None:
                chunks.close()  # tells the scheduler now: it frees the KV cache within one step
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
        """On the loop, once ``gen``'s thread is done with it: record it."""
        self._live.discard(gen)
        if self.metrics and gen.outcome != "rejected":
            self.metrics.finished(gen)
        if not self._live and self._idle is not None:
            self._idle.set()
