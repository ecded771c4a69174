"""The engines that run inside benchmarks/worker.py processes, behind small shared interfaces.

All take token ids (the same ids: SmolLM2's GGUF and Hugging Face vocabularies agree).
Raw loops (awqinfer's ``Model.forward``, transformers on torch), the kernels' figure:

    prefill(ids) -> seconds                   a fresh sequence, the whole prompt at once
    greedy(ids, n) -> (tokens, seconds)       prompt, then n greedy tokens; seconds for the n steps
    fill(ids, extra)                          keep a long sequence in a cache (room for extra more)
    decode_at(ctx, n) -> seconds              n greedy steps from position ctx of fill's sequence

Greedy steps end with an argmax over the logits, and never stop at EOS. As users meet them
(awqinfer's ``LLM.run(stream=True)``, llama-cpp-python's ``create_completion(stream=True)``):

    stream(ids, n) -> {"first_s", "decode_s", "tokens", "text"}   greedy, stops at EOS or n tokens

llama.cpp's own loop is timed by its own programs (benchmarks/llama_tools.py).
"""

from __future__ import annotations

import copy
import time

import numpy as np


class Awqinfer:
    """awqinfer raw (``Model.forward`` token by token: the kernels' figure) and as users meet it (``stream``)."""

    name = "awqinfer"

    def __init__(self, llm, fast: bool = True):
        self.llm = llm  # awqinfer.LLM
        self.model = llm.model  # awqinfer.engine.model.Model
        self.fast = fast
        self.long = None

    def stream(self, ids, n):
        """``LLM.run(stream=True)``, greedy, up to n tokens after the prompt ``ids`` (raw: no template added)."""
        prompt = self.llm.tokenizer.decode(list(ids), skip_special_tokens=False)
        chunks = self.llm.run({"prompt": prompt, "raw": True, "stream": True, "max_tokens": n, "temperature": 0})
        last = {}

        def text_of(chunk):
            last.update(chunk)
            return chunk["response"]
        return timed_stream(chunks, text_of, lambda: last["usage"]["completion_tokens"])

    def prefill(self, ids) -> float:
        cache = self.model.new_cache(len(ids))
        t = time.perf_counter()
        self.model.forward(ids, cache, last_only=True)
        return time.perf_counter() - t

    def greedy(self, ids, n):
        cache = self.model.new_cache(len(ids) + n)
        token = int(np.argmax(self.model.forward(ids, cache, last_only=True)[0]))
        out = [token]
        t = time.perf_counter()
        for _ in range(n - 1):
            token = int(np.argmax(self.model.forward([token], cache, fast=self.fast)[0]))
            out.append(token)
        return out, time.perf_counter() - t

    def fill(self, ids, extra):
        self.long = self.model.new_cache(len(ids) + extra)
        self.model.forward(ids, self.long, last_only=True)
        self.long_ids = list(ids)

    def decode_at(self, ctx, n) -> float:
        cache = self.long
        cache.pos = ctx  # positions 0..ctx-1 hold the prompt; later ones are overwritten
        token = self.long_ids[ctx]
        t = time.perf_counter()
        for _ in range(n):
            token = int(np.argmax(self.model.forward([token], cache, fast=self.fast)[0]))
        return time.perf_counter() - t


class LlamaCppPython:
    """llama-cpp-python, the Python-level peer: its streamed ``create_completion``, as its users call it."""

    name = "llama-cpp-python"

    def __init__(self, gguf_path, n_ctx: int, threads: int = 2):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf_path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                         n_batch=512, verbose=False)

    def stream(self, ids, n):
        """Greedy ``create_completion(stream=True)`` of up to n tokens after ``ids``: see ``timed_stream``."""
        self.llm.reset()
        chunks = self.llm.create_completion(list(ids), max_tokens=n, temperature=0.0, stream=True)
        return timed_stream(chunks, lambda chunk: chunk["choices"][0]["text"],
                            lambda: self.llm.n_tokens - len(ids) + 1)


def timed_stream(chunks, text_of, count) -> dict:
    """Consume a stream of text chunks; seconds to the first chunk and from it to the last, tokens made.

    ``count()`` (called at the end) gives the tokens generated. The decode rate is
    (tokens - 1) / (last - first): the first token's time is the prompt's.
    """
    start = time.perf_counter()
    first = last = None
    text = []
    for chunk in chunks:
        last = time.perf_counter()
        first = first or last
        text.append(text_of(chunk))
    return {"first_s": first - start, "decode_s": last - first, "tokens": count(), "text": "".join(text)}


class Torch:
    name = "torch"

    def __init__(self, gguf_path, threads: int = 2):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
        self.long = None

    def _step(self, ids, past):
        out = self.model(input_ids=self.torch.tensor([list(ids)]), past_key_values=past, use_cache=True)
        return out.logits[0, -1], out.past_key_values

    def prefill(self, ids) -> float:
        with self.torch.inference_mode():
            t = time.perf_counter()
            self.model(input_ids=self.torch.tensor([list(ids)]), use_cache=True, logits_to_keep=1)
            return time.perf_counter() - t

    def greedy(self, ids, n):
        with self.torch.inference_mode():
            logits, past = self._step(ids, None)
            token = int(logits.argmax())
            out = [token]
            t = time.perf_counter()
            for _ in range(n - 1):
                logits, past = self._step([token], past)
                token = int(logits.argmax())
                out.append(token)
            return out, time.perf_counter() - t

    def fill(self, ids, extra):
        with self.torch.inference_mode():
            _, self.long = self._step(ids, None)
        self.long_ids = list(ids)

    def decode_at(self, ctx, n) -> float:
        with self.torch.inference_mode():
            past = copy.deepcopy(self.long)
            drop = past.get_seq_length() - ctx
            if drop > 0:
                past.crop(-drop)  # transformers 5 takes the number of positions to remove
            token = self.long_ids[ctx]
            t = time.perf_counter()
            for _ in range(n):
                logits, past = self._step([token], past)
                token = int(logits.argmax())
            return time.perf_counter() - t
