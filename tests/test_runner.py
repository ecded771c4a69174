"""LLM.run and awqinfer.run end to end on the tiny checkpoints: result shape, usage, finish reasons,
seeds (also across processes), streaming == non-streaming, early close, and a property test that
arbitrary JSON-like inputs only ever give a result or an InputError.
"""

import gc
import json
import shutil
import subprocess
import sys
import time
import weakref
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import awqinfer
from awqinfer import InputError
from awqinfer.engine import llm as runner
from awqinfer.engine.model.cache import KVCache
from awqinfer.engine.model.kv_budget import KV_BUDGET
from awqinfer.engine.text.generate import generate_tokens
from awqinfer.engine.text.inputs import parse_inputs
from awqinfer.engine.text.sampling import SamplingParams
from checkpoints import make_model

SAMPLED = {"temperature": 1.0, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.2,
           "frequency_penalty": 0.3, "presence_penalty": 0.2, "seed": 4242}


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return awqinfer.load(tiny_llama)


@pytest.fixture(scope="module")
def qwen_awq(tiny_qwen2_awq):
    return awqinfer.load(tiny_qwen2_awq)


def completion_ids(llm, inputs):
    """The tokens run() generates for ``inputs``, straight from generate_tokens."""
    request = parse_inputs(inputs)
    return [t for t, _ in generate_tokens(llm.model, llm.prompt_ids(request), request.sampling, llm.stop_ids)]


def greedy_by_full_recompute(model, prompt_ids, n, stop_ids=frozenset()):
    """Independent greedy loop: every step runs the whole sequence through a fresh cache; ends after a stop id."""
    ids = list(prompt_ids)
    for _ in range(n):
        logits = model.forward(ids, model.new_cache(len(ids)))
        ids.append(int(np.argmax(logits[-1])))
        if ids[-1] in stop_ids:
            break
    return ids[len(prompt_ids):]


@pytest.mark.parametrize("which", ["llama", "qwen_awq"])
def test_result_shape_and_usage(which, request):
    llm = request.getfixturevalue(which)
    inputs = {"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
              "max_tokens": 7, **SAMPLED}
    out = llm.run(inputs)
    assert set(out) == {"response", "usage", "finish_reason"} and isinstance(out["response"], str)
    prompt_tokens = len(llm.prompt_ids(parse_inputs(inputs)))
    ids = completion_ids(llm, inputs)
    assert out["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids),
                            "total_tokens": prompt_tokens + len(ids)}
    assert out["finish_reason"] == ("length" if len(ids) == 7 else "stop")
    assert out["response"] == llm.tokenizer.decode([t for t in ids if t not in llm.stop_ids])


def test_greedy_generation_matches_a_full_recompute(llama):
    inputs = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "seed": 99}
    prompt_ids = llama.prompt_ids(parse_inputs(inputs))
    assert completion_ids(llama, inputs) == greedy_by_full_recompute(llama.model, prompt_ids, 6)
    assert llama.run(inputs) == llama.run({**inputs, "seed": 1})  # greedy ignores the seed


@pytest.mark.parametrize("which", ["llama", "qwen_awq"])
def test_stream_and_non_stream_equal_an_independent_greedy_loop(which, request):
    """Both forms of run() against a greedy loop over model.forward that shares none of run()'s code."""
    llm = request.getfixturevalue(which)
    inputs = {"prompt": "Write 😀 and 日本語 please", "max_tokens": 24, "temperature": 0}
    prompt_ids = llm.prompt_ids(parse_inputs(inputs))
    ids = greedy_by_full_recompute(llm.model, prompt_ids, 24, llm.stop_ids)
    want = llm.tokenizer.decode([t for t in ids if t not in llm.stop_ids])
    chunks = list(llm.run({**inputs, "stream": True}))
    whole = llm.run(inputs)
    assert "".join(c["response"] for c in chunks) == want == whole["response"]
    assert all(set(c) == {"response"} and c["response"] for c in chunks[:-1])
    usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids), "total_tokens": len(prompt_ids) + len(ids)}
    assert chunks[-1]["usage"] == whole["usage"] == usage
    assert chunks[-1]["finish_reason"] == whole["finish_reason"] == ("stop" if ids[-1] in llm.stop_ids else "length")


@pytest.mark.parametrize("which", ["llama", "qwen_awq"])
def test_sampled_stream_equals_non_stream(which, request):
    llm = request.getfixturevalue(which)
    inputs = {"prompt": "Write 😀 and 日本語 please", "max_tokens": 24, **SAMPLED}
    chunks = list(llm.run({**inputs, "stream": True}))
    whole = llm.run(inputs)
    assert "".join(c["response"] for c in chunks) == whole["response"]
    assert chunks[-1]["usage"] == whole["usage"] and chunks[-1]["finish_reason"] == whole["finish_reason"]
    ids = completion_ids(llm, inputs)  # a random model emits invalid UTF-8 too: U+FFFD only where decode has it
    assert whole["response"] == llm.tokenizer.decode([t for t in ids if t not in llm.stop_ids])


def test_same_seed_same_output_also_across_processes(tiny_llama, llama):
    inputs = {"prompt": "Hello", "max_tokens": 12, **SAMPLED}
    assert llama.run(inputs) == llama.run(inputs)
    code = "import json, sys, awqinfer; print(json.dumps(awqinfer.run(sys.argv[1], json.loads(sys.argv[2]))))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_llama), json.dumps(inputs)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1] == llama.run(inputs)
    assert outputs[0]["usage"]["completion_tokens"] == len(completion_ids(llama, inputs))


def test_different_seeds_and_no_seed_differ(llama):
    inputs = {"prompt": "Hello", "max_tokens": 6, "temperature": 1.5}
    by_seed = {llama.run({**inputs, "seed": s})["response"] for s in (1, 2, 3)}
    assert len(by_seed) == 3
    assert llama.run(inputs)["response"] != llama.run(inputs)["response"]  # a fresh seed each call


def test_in_range_values_without_natural_meaning(llama):
    base = {"prompt": "Hello", "max_tokens": 5, "seed": 3, "temperature": 1.0}
    assert llama.run({**base, "repetition_penalty": 0}) == llama.run({**base, "repetition_penalty": 1})
    greedy = llama.run({**base, "temperature": 0})
    assert llama.run({**base, "temperature": 1e-300}) == greedy
    assert llama.run({**base, "top_p": 0}) == greedy
    assert llama.run({**base, "top_k": 1}) == greedy


def with_eos(directory, tmp_path, eos_ids):
    copy = tmp_path / "model"
    shutil.copytree(directory, copy)
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}))
    return awqinfer.load(copy)


def test_stops_at_any_eos_of_generation_config(tiny_llama, llama, tmp_path):
    inputs = {"prompt": "Count", "max_tokens": 10, "temperature": 0}
    first, second, third = completion_ids(llama, inputs)[:3]
    assert third not in (first, second)  # the random model's greedy path, fixed by the checkpoint seed
    llm = with_eos(tiny_llama, tmp_path, [57, third])
    assert {2, 57, third} <= llm.stop_ids  # config.json's, generation_config's list, and the tokenizer's
    out = llm.run(inputs)
    assert out["finish_reason"] == "stop" and out["usage"]["completion_tokens"] == 3
    assert out["response"] == llama.tokenizer.decode([first, second])


def test_tokenizer_eos_is_a_stop_token(tiny_qwen2, tmp_path):
    from checkpoints import set_chat_template
    copy = tmp_path / "model"
    shutil.copytree(tiny_qwen2, copy)
    tok = json.loads((copy / "tokenizer_config.json").read_text())
    set_chat_template(copy, tok["chat_template"], eos_token="<|endoftext|>")
    llm = awqinfer.load(copy)
    assert llm.stop_ids == {2, llm.tokenizer.token_to_id("<|endoftext|>")}


def test_length_when_the_cache_is_full(tmp_path):
    llm = awqinfer.load(make_model(tmp_path / "short", "qwen2", max_positions=64))
    inputs = {"prompt": "Hi", "max_tokens": 10**400, "temperature": 1.0, "seed": 5}
    prompt_tokens = len(llm.prompt_ids(parse_inputs(inputs)))
    ids = completion_ids(llm, inputs)
    out = llm.run(inputs)
    assert out["finish_reason"] == "length" and not set(ids) & llm.stop_ids  # (seed 5 draws no EOS)
    assert out["usage"]["completion_tokens"] == 64 - prompt_tokens + 1 == len(ids)


def test_prompt_longer_than_the_context_is_an_error(llama):
    for stream in (False, True):
        with pytest.raises(InputError, match=r"^prompt: got \d+ tokens; allowed: at most 256"):
            llama.run({"prompt": "word " * 400, "stream": stream, "raw": True})


def test_bad_inputs_raise_before_streaming_starts(llama):
    with pytest.raises(InputError, match="top_k"):
        llama.run({"prompt": "hi", "stream": True, "top_k": 0})


@pytest.mark.parametrize("how", ["close", "drop"])
def test_abandoned_stream_frees_its_cache(llama, monkeypatch, how):
    """A stream closed or dropped by its consumer stops within a step: its cache and KV reservation go."""
    caches = []
    new_cache = llama.model.new_cache

    def spy(n, **kwargs):
        cache = new_cache(n, **kwargs)
        caches.append(weakref.ref(cache))
        return cache

    monkeypatch.setattr(llama.model, "new_cache", spy)
    reserved = KV_BUDGET.reserved
    stream = llama.run({"prompt": "Tell me a long story", "max_tokens": 200, "stream": True, **SAMPLED,
                        "temperature": 0.1})
    next(stream)
    assert isinstance(caches[0](), KVCache) and KV_BUDGET.reserved > reserved
    if how == "close":
        stream.close()
    del stream
    gc.collect()
    deadline = time.monotonic() + 10
    while (caches[0]() is not None or KV_BUDGET.reserved != reserved) and time.monotonic() < deadline:
        time.sleep(0.01)
        gc.collect()
    assert caches[0]() is None and KV_BUDGET.reserved == reserved


def test_awqinfer_run_reuses_loaded_models(tiny_llama, monkeypatch):
    calls = []

    def counting_load(model, device="cpu"):
        calls.append((model, device))
        return awqinfer.engine.llm.LLM.from_directory(model, device=device)

    monkeypatch.setattr(runner, "_LOADED", OrderedDict())
    monkeypatch.setattr(runner, "load", counting_load)
    inputs = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}
    first = awqinfer.run(tiny_llama, inputs)
    assert awqinfer.run(str(tiny_llama), inputs) == first
    assert len(calls) == 1
    for stream_chunk in awqinfer.run(tiny_llama, {**inputs, "stream": True}):
        assert "response" in stream_chunk


def test_awqinfer_run_evicts_the_least_recently_used_model(tiny_llama, tiny_qwen2, tiny_llama_awq, monkeypatch):
    calls = []

    def counting_load(model, device="cpu"):
        calls.append(model)
        return awqinfer.engine.llm.LLM.from_directory(model, device=device)

    monkeypatch.setattr(runner, "_LOADED", OrderedDict())
    monkeypatch.setattr(runner, "load", counting_load)
    inputs = {"prompt": "Hi", "max_tokens": 1, "temperature": 0}
    for model in (tiny_llama, tiny_qwen2, tiny_llama):  # tiny_llama is now the most recently used
        awqinfer.run(model, inputs)
    assert calls == [tiny_llama, tiny_qwen2]
    awqinfer.run(tiny_llama_awq, inputs)  # a third model: KEEP_LOADED is 2, so tiny_qwen2 goes
    assert [key for key, _ in runner._LOADED] == [str(tiny_llama), str(tiny_llama_awq)]
    awqinfer.run(tiny_qwen2, inputs)  # loaded again
    assert calls == [tiny_llama, tiny_qwen2, tiny_llama_awq, tiny_qwen2]
    assert len(runner._LOADED) == runner.KEEP_LOADED == 2


# ---- property test: arbitrary inputs -------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
ROLE = st.sampled_from(["system", "user", "assistant", "tool"])
VALID = {  # values the schema accepts (max_tokens kept small)
    "prompt": st.text(min_size=1, max_size=60),
    "messages": st.lists(st.fixed_dictionaries({"role": ROLE, "content": st.text(max_size=40)}), max_size=4)
    | st.lists(st.text(max_size=30), min_size=1, max_size=3).map(  # alternating, as Llama-2's template wants
        lambda texts: [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]),
    "stream": st.booleans(),
    "max_tokens": st.integers(1, 3),
    "temperature": st.floats(0, 5),
    "top_p": st.floats(0, 2),
    "top_k": st.integers(1, 50),
    "seed": st.integers(1, 9999999999),
    "repetition_penalty": st.floats(0, 2),
    "frequency_penalty": st.floats(0, 2),
    "presence_penalty": st.floats(0, 2),
}
NOT_A_BIG_NUMBER = JSON.filter(lambda v: isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 3)
ANYTHING = {**{key: value | JSON for key, value in VALID.items()}, "max_tokens": VALID["max_tokens"] | NOT_A_BIG_NUMBER,
            "prompt": VALID["prompt"] | JSON | st.just("a\ud800b"),  # a lone surrogate, as json.loads allows
            "raw": st.booleans() | JSON, "lora": JSON, "image": JSON, "tools": JSON, "functions": JSON,
            "unknown": JSON}


@st.composite
def inputs_strategy(draw):
    """Two thirds mostly-valid inputs (one field perhaps spoiled), one third arbitrary keys and values."""
    if draw(st.integers(0, 2)) > 0:
        base = draw(st.sampled_from(["prompt", "messages"]))
        keys = {base} | draw(st.sets(st.sampled_from(sorted(set(VALID) - {"prompt", "messages"})), max_size=6))
        out = {key: draw(VALID[key]) for key in keys}
        if base == "prompt" and draw(st.booleans()):
            out["raw"] = draw(st.booleans())
        if draw(st.integers(0, 2)) == 0:
            spoiled = draw(st.sampled_from(sorted(ANYTHING)))
            out[spoiled] = draw(ANYTHING[spoiled])
    else:
        keys = draw(st.sets(st.sampled_from(sorted(ANYTHING)), max_size=6))
        out = {key: draw(ANYTHING[key]) for key in keys}
    out.setdefault("max_tokens", 2)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(inputs=inputs_strategy())
def test_any_inputs_give_a_result_or_an_input_error(llama, inputs):
    try:
        out = llama.run(inputs)
        if inputs.get("stream") is True:
            out = runner.join_chunks(out)
    except InputError as e:
        assert str(e)
        return
    assert isinstance(out["response"], str) and out["finish_reason"] in ("stop", "length")
    assert 1 <= out["usage"]["completion_tokens"] <= SamplingParams(max_tokens=inputs["max_tokens"]).max_tokens
