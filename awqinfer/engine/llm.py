"""LLM: a loaded model with its tokenizer, the object ``awqinfer.load`` returns; ``run`` the one-shot call.

``LLM.run(inputs)`` is the Workers AI text-generation call, in layers:

    inputs -> Request (text/inputs.py) -> prompt ids (chat template or raw; tools: text/tools.py)
           -> a Sequence, with a grammar constraint for JSON mode and tools (text/constraints.py)
           -> the model's Scheduler (text/scheduler.py), batched with every other run -> tokens
           -> text chunks {"response": ...}, the last with "usage" and "finish_reason"
           -> with tools, tool calls read out of the text (text/tool_stream.py)
           -> with stream=False, the chunks joined into one result

The non-streamed result is built by joining the stream, so the two cannot disagree.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from ..errors import Cancelled, InputError
from . import hub
from .model.cache import check_kv_dtype, max_context
from .model.device import get_backend
from .model.forward import Model
from .model.kv_budget import KV_BUDGET
from .model.threads import resolve_threads
from .text.constraints import Constraint, Grammars
from .text.context import fit_messages
from .text.generate import Sequence, check_prompt
from .text.inputs import Request, parse_inputs
from .text.scheduler import Scheduler, TokenStream, check_bounds
from .text.schema import FIELDS
from .text.tokenizer import Tokenizer
from .text.tool_stream import read_tool_calls
from .text.tools import Tool, ToolChoice, parse_tool_choice, prompt_messages, takes_tools, tools_grammar


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
        self.grammars = Grammars(tokenizer, model.config.vocab_size, self.stop_ids)  # JSON mode, tool calls

    @property
    def adapters(self) -> list[str]:
        """The names of the loaded LoRA adapters (what ``inputs["lora"]`` may name), in the order added."""
        return self.model.adapters.names

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load the PEFT LoRA adapter directory ``path`` (adapter_config.json + adapter_model.safetensors) as ``name``.

        It is checked against this model first (CheckpointError naming the file and tensor, InputError
        for a name already taken); on an error nothing is added. Requests in flight are unaffected.
        """
        self.model.add_adapter(name, path)

    @classmethod
    def from_directory(cls, directory: str | Path, name: str = "", device: str = "cpu",
                       int8: bool = False, threads: int | None = None, kv_dtype: str = "float16",
                       max_batch: int | None = None, max_queue: int | None = None,
                       lora_dir: str | Path | None = None) -> "LLM":
        """Load a Hugging Face checkpoint directory (config, safetensors, tokenizer) onto ``device``.

        ``int8``: float projections become int8 weight-only at load (``@cf/meta/llama-2-7b-chat-int8``).
        ``threads``: CPU threads for the kernels (default: the cores this process may use).
        ``kv_dtype``: how KV caches hold keys and values, "float16" (default) or "float32".
        ``max_batch``, ``max_queue``: the scheduler's bounds (see ``load``).
        ``lora_dir``: a folder of PEFT LoRA adapters, one per subfolder, each named by it.
        """
        named = adapter_dirs(lora_dir) if lora_dir is not None else {}  # a bad folder fails before the weights load
        model = Model.load(directory, device, int8, threads, kv_dtype)
        if named:
            model.add_adapters(named)
        tokenizer = Tokenizer(directory, context=max_context(model.config))
        return cls(model, tokenizer, name or str(directory), max_batch, max_queue)

    def run(self, inputs: dict, *, cancel: threading.Event | None = None,
            on_prefill: Callable[[int, int], None] | None = None, tool_choice=None, parallel_tool_calls: bool = True):
        """Generate text for Workers AI ``inputs``: a result dict, or with ``stream`` an iterator of chunks.

        Result: {"response": str, "usage": {prompt_tokens, completion_tokens, total_tokens},
        "finish_reason": "stop" | "length" | "tool_calls"}; completion_tokens counts every generated
        token, a final EOS included (it adds no text). Chunks: {"response": str}, the last one also
        with "usage" and "finish_reason". Bad inputs raise InputError here, before any chunk, also
        when streaming.

        ``response_format`` (JSON mode): the output is JSON valid under the schema, and the result's
        "response" is the parsed value; if max_tokens cuts it, finish_reason is "length" and
        "response" the text so far. Chunks carry the JSON text. ``tools`` / ``functions``: the
        result has "tool_calls": [{"name", "arguments": {...}}] when the model called tools
        (finish_reason "tool_calls"), "response" any text before them; chunks stream each call as
        "tool_call_delta" pieces (text/tool_stream.py) and the last chunk carries "tool_calls".

        For front ends: ``cancel`` (a threading.Event, set from any thread) stops the generation
        at the next prompt chunk or decode step, and a cancelled stream simply ends;
        ``on_prefill(done, total)`` reports the prompt's progress, chunk by chunk; ``tool_choice``
        (OpenAI's: "auto", "none", "required" or {"type": "function", "function": {"name"}}) and
        ``parallel_tool_calls`` (False: one call at most) say how the tools may be used.
        """
        request = parse_inputs(inputs)
        self.model.adapters.index(request.lora)  # an adapter that is not loaded: InputError naming those that are
        if not isinstance(parallel_tool_calls, bool):
            raise InputError(f"parallel_tool_calls: got {parallel_tool_calls!r}; allowed: true or false")
        choice = parse_tool_choice(tool_choice, request.tools)
        tools = () if choice.mode == "none" else request.tools
        prompt_ids = self.prompt_ids(request, tools)
        check_prompt(self.model, prompt_ids)
        constraint = self._constraint(request, tools, choice, parallel_tool_calls)
        seq = Sequence(self.model, prompt_ids, request.sampling, self.stop_ids, cancel, on_prefill,
                       adapter=request.lora, constraint=constraint)
        chunks = self._chunks(len(prompt_ids), self.scheduler.submit(seq))  # queued now: errors raise here
        if tools:
            chunks = read_tool_calls(chunks)
        return chunks if request.stream else join_chunks(chunks, parse_json=request.json_schema is not None)

    @property
    def requests(self) -> tuple[int, int]:
        """(running, waiting): the sequences this model's scheduler steps now, and those queued for a place."""
        return self.scheduler.counts

    def fit_messages(self, messages: list[dict], max_tokens: int = FIELDS["max_tokens"].default,
                     tools: list | None = None, functions: list | None = None) -> tuple[list[dict], int]:
        """``messages`` with their oldest turns dropped until the prompt leaves room for ``max_tokens``.

        Returns (the messages kept, how many were dropped); system messages and the last
        turn always stay (text/context.py). ``tools`` / ``functions``: those the run will
        offer, counted as the prompt will hold them. An opt-in for front ends that keep a long
        conversation going; ``run`` itself never truncates.
        """
        inputs = {"messages": messages, "max_tokens": max_tokens, "tools": tools, "functions": functions}
        request = parse_inputs({k: v for k, v in inputs.items() if v is not None})  # checked as run checks them
        room = max(1, max_context(self.model.config) - request.sampling.max_tokens)
        return fit_messages(request.messages, lambda kept: len(self.prompt_ids(replace(request, messages=kept))),
                            room)

    def prompt_ids(self, request: Request, tools: tuple[Tool, ...] | None = None) -> list[int]:
        """The prompt as token ids: messages and non-raw prompts go through the chat template.

        ``tools``: those offered to the model (default: the request's), described by the template
        if it takes tools, else by a system preamble (text/tools.py).
        """
        if request.messages is not None:
            native = takes_tools(self.tokenizer.chat_template.source)
            messages, template_tools = prompt_messages(request.messages, request.tools if tools is None else tools,
                                                       native)
            return self.tokenizer.encode_chat(messages, template_tools)
        if request.raw:
            return self.tokenizer.encode_raw(request.prompt)
        return self.tokenizer.encode_chat([{"role": "user", "content": request.prompt}])

    def _constraint(self, request: Request, tools: tuple[Tool, ...], choice: ToolChoice,
                    parallel: bool) -> Constraint | None:
        """The grammar this request's output must follow, as a fresh matcher (None: free text)."""
        if request.json_schema is not None:
            grammar = self.grammars.json_schema(request.json_schema)
            return self.grammars.constraint(grammar, "response_format.json_schema")
        if tools:
            return self.grammars.constraint(tools_grammar(tools, choice, parallel, self.grammars), "tools")
        return None

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


def json_mode(inputs: dict) -> bool:
    """Whether ``inputs`` (already accepted by run) ask for JSON output: then ``response`` is parsed."""
    return inputs.get("response_format", {}).get("type", "text") != "text"


def join_chunks(chunks, parse_json: bool = False) -> dict:
    """The non-streamed result: the chunks' text joined, the usage, finish reason and tool calls of the last.

    ``parse_json`` (JSON mode): "response" is the JSON text parsed, unless the output was cut short
    (finish_reason "length"): then it stays the text so far.
    """
    texts, last = [], {}
    for chunk in chunks:
        texts.append(chunk["response"])
        last = chunk
    if "usage" not in last:  # the stream ended early: its cancel event was set
        raise Cancelled("the generation was cancelled before it finished")
    text = "".join(texts)
    result = {"response": json.loads(text) if parse_json and last["finish_reason"] == "stop" else text,
              "usage": last["usage"], "finish_reason": last["finish_reason"]}
    if "tool_calls" in last:
        result["tool_calls"] = last["tool_calls"]
    return result


_LOADED: OrderedDict = OrderedDict()  # (model, device) -> LLM, most recently used last
KEEP_LOADED = 2


def load(model: str | Path | None = None, device: str = "cpu", threads: int | None = None,
         kv_dtype: str = "float16", kv_budget: int | str | None = None, max_batch: int | None = None,
         max_queue: int | None = None, lora_dir: str | Path | None = None) -> LLM:
    """Load ``model`` (a directory, HF repo id, Workers AI name, or None for the default; see hub.py) onto ``device``.

    ``threads``: CPU threads for the kernels; default the cores this process may use
    (``os.sched_getaffinity``). On a busy machine fewer can be faster.
    ``kv_dtype``: "float16" (default: half the memory and bandwidth of attention) or "float32".
    ``kv_budget``: the process-wide KV memory budget (bytes or a size such as "4GB"); None keeps
    the current one (default: half the memory available). Requests wait for room within it.
    ``max_batch``: the most sequences stepped together (default 16); ``max_queue``: the most
    requests waiting for a place (default: no bound; beyond it run() raises QueueFull).
    ``lora_dir``: a folder of PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors),
    one per subfolder, each loaded under its subfolder's name; ``inputs["lora"]`` picks one per request.
    """
    get_backend(device)  # bad arguments are errors before any file is touched
    resolve_threads(threads)
    check_kv_dtype(kv_dtype)
    check_bounds(max_batch, max_queue)
    if kv_budget is not None:
        set_kv_budget(kv_budget)
    directory, int8 = hub.resolve(model)
    name = hub.DEFAULT_NAME if model is None else str(model)
    return LLM.from_directory(directory, name, device, int8, threads, kv_dtype, max_batch, max_queue, lora_dir)


def adapter_dirs(lora_dir: str | Path) -> dict[str, Path]:
    """{name: directory} for every subfolder of ``lora_dir`` (hidden ones aside); an InputError if there are none."""
    root = Path(lora_dir)
    if not root.is_dir():
        raise InputError(f"lora_dir: {root} is not a directory (expected a folder of PEFT adapter folders)")
    if (root / "adapter_config.json").exists():
        raise InputError(f"lora_dir: {root} is itself an adapter; lora_dir is the folder above it (one subfolder "
                         "per adapter), or load this one with add_adapter(name, path)")
    named = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if not named:
        raise InputError(f"lora_dir: {root} holds no adapter folders (expected one subfolder per adapter, each "
                         "with adapter_config.json and adapter_model.safetensors)")
    return named


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
