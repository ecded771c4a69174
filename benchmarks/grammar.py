"""The cost of grammar-constrained decoding: decode tokens/s with and without a JSON Schema, and the mask alone.

    python -m benchmarks.grammar                 # the default model, 3 interleaved repeats
    python -m benchmarks.grammar --repeats 5 --tokens 128

Both arms run the engine's own path (the scheduler's batched decode step and Sequence.sample)
on the same prompt, sampling at temperature 0.7, with no stop token so each runs exactly
``--tokens`` tokens; the schema (an array of 50 {name, age} objects) is long enough never to
end first. The mask alone is timed by replaying the constrained tokens through a fresh matcher
(``Constraint.apply`` + ``advance`` per token), and a free-text output through the tools grammar
(text until a ``<tool_call>``), whose mask is the most expensive kind: nearly every token allowed.
Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import awqinfer
from awqinfer.engine.text.generate import Sequence
from awqinfer.engine.text.sampling import SamplingParams
from awqinfer.engine.text.tools import ToolChoice, parse_tools, tools_grammar

SCHEMA = {"type": "array", "minItems": 50, "maxItems": 50,
          "items": {"type": "object", "additionalProperties": False, "required": ["name", "age"],
                    "properties": {"name": {"type": "string", "maxLength": 12},
                                   "age": {"type": "integer", "minimum": 0, "maximum": 120}}}}
TOOLS = [{"name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
PROMPT = [{"role": "user", "content": "List fifty people with their names and ages, as JSON."}]


def decode(llm, prompt_ids: list[int], n: int, constraint) -> tuple[float, list[int]]:
    """Decode tokens/s over n tokens (first token excluded: it ends the prefill) and the tokens."""
    params = SamplingParams(max_tokens=n, temperature=0.7, seed=1)
    seq = Sequence(llm.model, prompt_ids, params, frozenset(), constraint=constraint)
    stamps, tokens = [], []
    for token, _ in llm.scheduler.submit(seq):
        stamps.append(time.perf_counter())
        tokens.append(token)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), tokens


def mask_micros(constraint, tokens: list[int], vocab: int) -> list[float]:
    """Microseconds per token of masking the logits and advancing the matcher, replaying ``tokens``."""
    logits = np.random.default_rng(0).standard_normal(vocab).astype(np.float32)
    out = []
    for token in tokens:
        t = time.perf_counter()
        constraint.apply(logits)
        done = constraint.advance(token)
        out.append((time.perf_counter() - t) * 1e6)
        if done:
            break
    return out


def summary(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model name (default: the default model)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    llm = awqinfer.load(args.model)
    prompt_ids = llm.tokenizer.encode_chat(PROMPT)
    grammar = llm.grammars.json_schema(SCHEMA)
    decode(llm, prompt_ids, 8, None)  # compile and warm up
    free, constrained, json_tokens, text_tokens = [], [], [], []
    for r in range(args.repeats):  # interleaved, the order alternating
        for arm in ((0, 1) if r % 2 == 0 else (1, 0)):
            if arm == 0:
                rate, text_tokens = decode(llm, prompt_ids, args.tokens, None)
                free.append(rate)
            else:
                rate, json_tokens = decode(llm, prompt_ids, args.tokens,
                                           llm.grammars.constraint(grammar, "schema"))
                constrained.append(rate)
    vocab = llm.model.config.vocab_size
    json_mask = mask_micros(llm.grammars.constraint(grammar, "schema"), json_tokens, vocab)
    tools = tools_grammar(parse_tools(TOOLS, None), ToolChoice(), True, llm.grammars)
    text_mask = mask_micros(llm.grammars.constraint(tools, "tools"), text_tokens, vocab)
    ratio = statistics.median(constrained) / statistics.median(free)
    step_ms = 1e3 / statistics.median(free)
    print(f"Model {llm.name}, vocabulary {vocab}; {args.tokens} tokens per run, {args.repeats} interleaved repeats; "
          f"load average before / after: {', '.join(f'{x:.1f}' for x in load_before)} / "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.\n")
    print("| decode, temperature 0.7 | tokens/s, median (min-max) |")
    print("| --- | --- |")
    print(f"| free text | {summary(free)} |")
    print(f"| JSON Schema constraint | {summary(constrained)} ({ratio:.2f}x free text) |")
    print("\n| mask + advance, per token | microseconds, median (min-max) | p99 | share of a free decode step |")
    print("| --- | --- | --- | --- |")
    for name, micros in (("JSON Schema (inside the array)", json_mask), ("tools grammar, free text", text_mask)):
        p99 = float(np.percentile(micros, 99))
        print(f"| {name} | {summary(micros, 0)} | {p99:.0f} | {statistics.median(micros) / 1e3 / step_ms:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
