"""LLM: a loaded model with its tokenizer, the object ``awqinfer.load`` returns; ``run`` the one-shot call.

``LLM.run(inputs)`` is the Workers AI text-generation call, in layers:

    inputs -> Request (text/inputs.py) -> prompt ids (chat template or raw) -> a Sequence
           -> the model's Scheduler (text/scheduler.py), batched with every other run -> tokens
           -> text chunks {"response": ...}, the last with "usage" and "finish_reason"
           -> with stream=False, the chunks joined into one result

The non-streamed result is built by joining the stream, so the two cannot disagree.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterator

from ..errors import Cancelled
from . import hub
from .model.cache import check_kv_dtype, max_context
from .model.device import get_backend
from .model.forward import Model
from .model.kv_budget import KV_BUDGET
from .model.threads import resolve_threads
from .text.context import fit_messages
from .text.generate import Sequence, check_prompt
from .text.inputs import Request, parse_inputs
from .text.scheduler import Scheduler, TokenStream, check_bounds
from .text.schema import FIELDS
from .text.tokenizer import Tokenizer


class LLM:
    """A model and its tokenizer, loaded once, used for many ``run`` calls."""

    def __init__(self, model: Model, tokenizer: Tokenizer, name: str = "", max_batch: int | None = None,
                 max_queue: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        # generation stops at any EOS: config.json's and generation_config.json's, and the tokenizer's
        self.stop_ids = frozenset(model.config.eos_token_ids) | tokenizer.eos_token_ids
        # every run() of this model, from any thread, is batched on one engine thread
        self.scheduler = Scheduler(model, max_batch, max_queue)

    @classmethod
    def from_directory(cls, directory: str | Path, name: str = "", device: str = "cpu",
                       int8: bool = False, threads: int | None = None, kv_dtype: str = "float16",
                       max_batch: int | None = None, max_queue: int | None = None) -> "LLM":
        """Load a Hugging Face checkpoint directory (config, safetensors, tokenizer) onto ``device``.

        ``int8``: float projections become int8 weight-only at load (``@cf/meta/llama-2-7b-chat-int8``).
        ``threads``: CPU threads for the kernels (default: the cores this process may use).
        ``kv_dtype``: how KV caches hold keys and values, "float16" (default) or "float32".
        ``max_batch``, ``max_queue``: the scheduler's bounds (see ``load``).
        """
        model = Model.load(directory, device, int8, threads, kv_dtype)
        tokenizer = Tokenizer(directory, context=max_context(model.config))
        return cls(model, tokenizer, name or str(directory), max_batch, max_queue)

    def run(self, inputs: dict, *, cancel: threading.Event | None = None,
            on_prefill: Callable[[int, int], None] | None = None):
        """Generate text for Workers AI ``inputs``: a result dict, or with ``stream`` an iterator of chunks.

        Result: {"response": str, "usage": {prompt_tokens, completion_tokens, total_tokens},
        "finish_reason": "stop" | "length"}; completion_tokens counts every generated token,
        a final EOS included (it adds no text). Chunks: {"response": str}, the last one also
        with "usage" and "finish_reason". Bad inputs raise InputError here, before any
        chunk, also when streaming.

        For front ends: ``cancel`` (a threading.Event, set from any thread) stops the generation
        at the next prompt chunk or decode step, and a cancelled stream simply ends;
        ``on_prefill(done, total)`` reports the prompt's progress, chunk by chunk.
        """
        request = parse_inputs(inputs)
        prompt_ids = self.prompt_ids(request)
        check_prompt(self.model, prompt_ids)
        seq = Sequence(self.model, prompt_ids, request.sampling, self.stop_ids, cancel, on_prefill)
        chunks = self._chunks(len(prompt_ids), self.scheduler.submit(seq))  # queued now: errors raise here
        return chunks if request.stream else join_chunks(chunks)

    @property
    def requests(self) -> tuple[int, int]:
        """(running, waiting): the sequences this model's scheduler steps now, and those queued for a place."""
        return self.scheduler.counts

    def fit_messages(self, messages: list[dict],
                     max_tokens: int = FIELDS["max_tokens"].default) -> tuple[list[dict], int]:
        """``messages`` with their oldest turns dropped until the prompt leaves room for ``max_tokens``.

        Returns (the messages kept, how many were dropped); system messages and the last
        turn always stay (text/context.py). An opt-in for front ends that keep a long
        conversation going; ``run`` itself never truncates.
        """
        request = parse_inputs({"messages": messages, "max_tokens": max_tokens})  # checked as run checks them
        room = max(1, max_context(self.model.config) - request.sampling.max_tokens)
        return fit_messages(request.messages, lambda kept: len(self.tokenizer.encode_chat(kept)), room)

    def prompt_ids(self, request: Request) -> list[int]:
        """The prompt as token ids: messages and non-raw prompts go through the chat template."""
        if request.messages is not None:
            return self.tokenizer.encode_chat(request.messages)
        if request.raw:
            return self.tokenizer.encode_raw(request.prompt)
        return self.tokenizer.encode_chat([{"role": "user", "content": request.prompt}])

    def _chunks(self, n_prompt: int, tokens: TokenStream) -> Iterator[dict]:
        """Generated tokens -> text chunks; stop tokens count as output but add no text."""
        decoder = self.tokenizer.stream_decoder()
        with closing(tokens):
            for n, (token, reason) in enumerate(tokens, start=1):
                text = "" if token in self.stop_ids else decoder.add(token)
                if reason is None:
                    if text:
                        yield {"response": text}
                    continue
                usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
                yield {"response": text + decoder.finish(), "usage": usage, "finish_reason": reason}


def join_chunks(chunks) -> dict:
    """The non-streamed result: the chunks' text joined, the usage and finish reason of the last."""
    texts, last = [], {}
    for chunk in chunks:
        texts.append(chunk["response"])
        last = chunk
    if "usage" not in last:  # the stream ended early: its cancel event was set
        raise Cancelled("the generation was cancelled before it finished")
    return {"response": "".join(texts), "usage": last["usage"], "finish_reason": last["finish_reason"]}


_LOADED: OrderedDict = OrderedDict()  # (model, device) -> LLM, most recently used last
KEEP_LOADED = 2


def load(model: str | Path | None = None, device: str = "cpu", threads: int | None = None,
         kv_dtype: str = "float16", kv_budget: int | str | None = None, max_batch: int | None = None,
         max_queue: int | None = None) -> LLM:
    """Load ``model`` (a directory, HF repo id, Workers AI name, or None for the default; see hub.py) onto ``device``.

    ``threads``: CPU threads for the kernels; default the cores this process may use
    (``os.sched_getaffinity``). On a busy machine fewer can be faster.
    ``kv_dtype``: "float16" (default: half the memory and bandwidth of attention) or "float32".
    ``kv_budget``: the process-wide KV memory budget (bytes or a size such as "4GB"); None keeps
    the current one (default: half the memory available). Requests wait for room within it.
    ``max_batch``: the most sequences stepped together (default 16); ``max_queue``: the most
    requests waiting for a place (default: no bound; beyond it run() raises QueueFull).
    """
    get_backend(device)  # bad arguments are errors before any file is touched
    resolve_threads(threads)
    check_kv_dtype(kv_dtype)
    check_bounds(max_batch, max_queue)
    if kv_budget is not None:
        set_kv_budget(kv_budget)
    directory, int8 = hub.resolve(model)
    name = hub.DEFAULT_NAME if model is None else str(model)
    return LLM.from_directory(directory, name, device, int8, threads, kv_dtype, max_batch, max_queue)


def set_kv_budget(limit: int | str) -> None:
    """Set the process-wide KV memory budget (bytes, or a size such as "4GB"); InputError if malformed."""
    KV_BUDGET.set_limit(limit)


def kv_cache_usage() -> tuple[int, int]:
    """(bytes of KV cache reserved by the live sequences of every model, the process's KV budget in bytes)."""
    return KV_BUDGET.reserved, KV_BUDGET.limit


def run(model, inputs: dict, device: str = "cpu"):
    """One-shot ``load(model, device).run(inputs)``; the last KEEP_LOADED models stay loaded for reuse."""
    key = (os.fspath(model) if isinstance(model, os.PathLike) else model, device)
    llm = _LOADED.pop(key, None) or load(model, device)
    _LOADED[key] = llm
    while len(_LOADED) > KEEP_LOADED:
        _LOADED.popitem(last=False)
    return llm.run(inputs)
