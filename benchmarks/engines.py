"""The three engines behind one small interface, so run.py times them the same way.

Each engine takes token ids (the same ids for all three: SmolLM2's GGUF and Hugging
Face vocabularies agree) and offers:

    prefill(ids) -> seconds                   a fresh sequence, the whole prompt at once
    greedy(ids, n) -> (tokens, seconds)       prompt, then n greedy tokens; seconds for the n steps
    fill(ids, extra)                          keep a long sequence in a cache (room for extra more)
    decode_at(ctx, n) -> seconds              n greedy steps from position ctx of fill's sequence

Greedy steps end with an argmax over the logits in every engine, and never stop at EOS.
"""

from __future__ import annotations

import copy
import time

import numpy as np


class Awqinfer:
    name = "awqinfer"

    def __init__(self, model, fast: bool = True):
        self.model = model  # awqinfer.engine.model.Model
        self.fast = fast
        self.long = None

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


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, gguf_path, n_ctx: int, threads: int = 2):
        from llama_cpp import Llama

        make = lambda: Llama(model_path=str(gguf_path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                             n_batch=512, verbose=False)
        self.llm = make()  # prompts and short runs
        self.long = make()  # the long sequence of fill / decode_at, kept between calls
        self.n_vocab = self.llm.n_vocab()
        self.long_ids = None

    def _logits(self, llm=None):
        """The last evaluated token's logits (eval() asks llama.cpp for those only)."""
        return np.ctypeslib.as_array((llm or self.llm)._ctx.get_logits(), shape=(self.n_vocab,))

    def prefill(self, ids) -> float:
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(list(ids))
        return time.perf_counter() - t

    def greedy(self, ids, n):
        self.llm.reset()
        self.llm.eval(list(ids))
        token = int(np.argmax(self._logits()))
        out = [token]
        t = time.perf_counter()
        for _ in range(n - 1):
            self.llm.eval([token])
            token = int(np.argmax(self._logits()))
            out.append(token)
        return out, time.perf_counter() - t

    def fill(self, ids, extra):
        self.long.reset()
        self.long.eval(list(ids))
        self.long_ids = list(ids)
        self.valid = len(ids)  # cache positions that still hold long_ids

    def decode_at(self, ctx, n) -> float:
        llm = self.long
        if ctx > self.valid:  # llama.cpp needs consecutive positions: re-feed the prompt (untimed)
            llm.n_tokens = self.valid
            llm.eval(self.long_ids[self.valid : ctx])
        llm.n_tokens = ctx  # eval() drops the cache entries from n_tokens on before it decodes
        self.valid = ctx
        token = self.long_ids[ctx]
        t = time.perf_counter()
        for _ in range(n):
            llm.eval([token])
            token = int(np.argmax(self._logits(llm)))
        return time.perf_counter() - t


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
