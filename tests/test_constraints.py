"""JSON mode: grammar-constrained decoding (text/constraints.py) under ``response_format``.

A random tiny model writes noise, so any valid JSON it gives is the grammar's doing: for a set
of schemas and many seeds and sampling settings, every output validates with ``jsonschema``
(an oracle we did not write), streamed output joins to the same value, and a cut-short output
is the text so far. The mask is also tested alone: forbidden tokens get probability 0 whatever
the sampling parameters.
"""

import json
import time

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llguidance
from llguidance.numpy import apply_token_bitmask_inplace

import awqinfer
from awqinfer import InputError
from awqinfer.engine.text.constraints import Grammars
from awqinfer.engine.text.generate import Sequence
from awqinfer.engine.text.sampling import History, SamplingParams, probabilities
from awqinfer.engine.text.tokenizer import Tokenizer

SCHEMAS = {
    "nested objects": {
        "type": "object", "additionalProperties": False, "required": ["user"],
        "properties": {"user": {"type": "object", "additionalProperties": False, "required": ["name", "id"],
                                "properties": {"name": {"type": "string", "maxLength": 8},
                                               "id": {"type": "integer", "minimum": 1, "maximum": 999}}}}},
    "array with min/max items": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
                                 "minItems": 2, "maxItems": 4},
    "enums": {"type": "object", "additionalProperties": False, "required": ["color", "size"],
              "properties": {"color": {"enum": ["red", "green", "blue"]},
                             "size": {"type": "string", "enum": ["S", "M", "L"]}}},
    "bounded integers": {"type": "object", "additionalProperties": False, "required": ["a", "b"],
                         "properties": {"a": {"type": "integer", "minimum": 10, "maximum": 20},
                                        "b": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3}}},
    "nullable types": {"type": "object", "additionalProperties": False, "required": ["x", "y"],
                       "properties": {"x": {"type": ["string", "null"], "maxLength": 5},
                                      "y": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                                      {"type": "null"}]}}},
    "string lengths and patterns": {"type": "object", "additionalProperties": False, "required": ["code", "tag"],
                                    "properties": {"code": {"type": "string", "minLength": 3, "maxLength": 3},
                                                   "tag": {"type": "string", "pattern": "^[a-z]{2,4}$"}}},
    "nothing required": {"type": "object", "additionalProperties": False,
                         "properties": {"p": {"type": "boolean"},
                                        "q": {"type": "integer", "minimum": 0, "maximum": 3}}},
    "array of objects": {"type": "array", "minItems": 1, "maxItems": 2,
                         "items": {"type": "object", "additionalProperties": False, "required": ["k", "v"],
                                   "properties": {"k": {"type": "string", "maxLength": 3}, "v": {"type": "boolean"}}}},
}
# sampling settings the seeds cycle through: the grammar must hold under every one
SAMPLING = [{"temperature": 1.0}, {"temperature": 1.5, "top_k": 20}, {"temperature": 0.8, "top_p": 0.9},
            {"temperature": 1.0, "repetition_penalty": 1.8, "frequency_penalty": 1.0, "presence_penalty": 1.5},
            {"temperature": 0}]
PROMPT = [{"role": "user", "content": "Answer in JSON."}]


def json_inputs(schema, seed, **extra):
    return {"messages": PROMPT, "response_format": {"type": "json_schema", "json_schema": schema}, "seed": seed,
            "max_tokens": 200, **SAMPLING[seed % len(SAMPLING)], **extra}


def joined(chunks):
    chunks = list(chunks)
    return "".join(c["response"] for c in chunks), chunks[-1]


@pytest.fixture(scope="module", params=["tiny_qwen2", "tiny_llama"])
def tiny(request):
    """A tiny random model of each tokenizer style (byte-level BPE, SentencePiece with byte fallback)."""
    return awqinfer.load(request.getfixturevalue(request.param))


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_output_validates_and_streams_as_it_joins(tiny, name):
    schema = SCHEMAS[name]
    seeds = range(1, 9)
    # all seeds at once, streamed: one matcher per sequence in one batch
    streams = {seed: tiny.run(json_inputs(schema, seed, stream=True)) for seed in seeds}
    for seed, stream in streams.items():
        text, last = joined(stream)
        assert last["finish_reason"] == "stop", (seed, text)
        value = json.loads(text)
        jsonschema.validate(value, schema)
        alone = tiny.run(json_inputs(schema, seed))  # not streamed, not batched: the same value and usage
        assert alone["response"] == value and alone["usage"] == last["usage"]


def test_json_object_mode_and_prompt_form(tiny):
    for seed in range(1, 6):
        out = tiny.run({"prompt": "A JSON object:", "response_format": {"type": "json_object"}, "seed": seed,
                        "max_tokens": 150, "temperature": 0.7})
        if out["finish_reason"] == "stop":
            assert isinstance(out["response"], dict)
        else:  # a random model may write a long string: cut short, the text so far
            assert out["finish_reason"] == "length" and out["response"].startswith("{")


def test_a_cut_short_output_is_the_text_so_far(tiny):
    schema = SCHEMAS["array of objects"]
    text, last = joined(tiny.run(json_inputs(schema, 3, stream=True)))
    cut = tiny.run(json_inputs(schema, 3, max_tokens=4))
    assert cut["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 4
    assert isinstance(cut["response"], str) and text.startswith(cut["response"]) and cut["response"]


def test_text_format_is_free_text(tiny):
    free = tiny.run({"prompt": "Hi", "seed": 5, "max_tokens": 12})
    assert tiny.run({"prompt": "Hi", "seed": 5, "max_tokens": 12, "response_format": {"type": "text"}}) == free


@pytest.mark.parametrize("response_format,match", [
    ({"type": "json_schema", "json_schema": {"type": "foo"}}, r"^response_format\.json_schema: Invalid type: foo"),
    ({"type": "json_schema", "json_schema": {"type": "array", "uniqueItems": True}}, "Unimplemented keys.*uniqueItems"),
    ({"type": "json_schema", "json_schema": {"type": "array", "minItems": 3, "maxItems": 1}}, "Unsatisfiable"),
    ({"type": "json_schema", "json_schema": {"type": "string", "pattern": "(?=a)b"}}, "look-around"),
    ({"type": "json_schema", "json_schema": {"$ref": "#/$defs/missing"}}, "does not exist"),
    ({"type": "json_schema", "json_schema": {"type": "number", "maximum": float("nan")}}, "not JSON data"),
    ({"type": "json_schema", "json_schema": [{"type": "object"}]}, r"json_schema: got \[.*a JSON Schema object"),
    ({"type": "json_schema"}, r"^response_format: got the keys \['type'\].*exactly \['json_schema', 'type'\]"),
    ({"type": "json_object", "json_schema": {}}, r"^response_format: got the keys .*exactly \['type'\]"),
    ({"type": "xml"}, r"^response_format: got \{'type': 'xml'\}.*json_object"),
    ("json", r"^response_format: got 'json' \(str\)"),
])
def test_bad_response_formats_are_input_errors_before_any_chunk(tiny_qwen2, response_format, match):
    llm = awqinfer.load(tiny_qwen2)
    with pytest.raises(InputError, match=match):
        llm.run({"prompt": "x", "response_format": response_format, "stream": True})


@pytest.fixture(scope="module")
def grammars(tiny_qwen2):
    tokenizer = Tokenizer(tiny_qwen2)
    return Grammars(tokenizer, 512, tokenizer.eos_token_ids)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(0, 12), scale=st.sampled_from([1.0, 30.0, 1e4]),
       temperature=st.sampled_from([0, 0.01, 0.7, 1.0, 5.0]), top_k=st.sampled_from([None, 1, 3, 50]),
       top_p=st.sampled_from([1.0, 0.0, 0.3, 0.95]), repetition=st.sampled_from([1.0, 0.0, 1e-300, 0.5, 2.0]),
       frequency=st.sampled_from([0.0, 2.0]), presence=st.sampled_from([0.0, 2.0]))
def test_the_mask_gives_forbidden_tokens_probability_zero(grammars, seed, steps, scale, temperature, top_k, top_p,
                                                          repetition, frequency, presence):
    """Whatever the logits, history and sampling parameters, the distribution drawn from is 0 off the grammar."""
    rng = np.random.default_rng(seed)
    constraint = grammars.constraint(grammars.json_schema(SCHEMAS["nested objects"]), "schema")
    for _ in range(steps):  # somewhere inside the JSON
        allowed = np.flatnonzero(constraint.allowed())
        token = int(rng.choice(allowed))
        if token in grammars.stop_ids or constraint.advance(token):
            break
    allowed = constraint.allowed()
    history = History(512, rng.integers(0, 512, size=20))  # prompt tokens seen, forbidden ones among them
    for token in rng.integers(0, 512, size=10):
        history.add(int(token))
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition,
                            frequency_penalty=frequency, presence_penalty=presence)
    logits = (rng.standard_normal(512) * scale).astype(np.float32)
    logits[~allowed] += np.float32(scale * 10)  # the forbidden tokens are the model's favourites
    probs = probabilities(constraint.apply(logits), history, params)
    assert np.all(np.isfinite(probs)) and np.isclose(probs.sum(), 1.0)
    assert probs[~allowed].sum() == 0.0 and probs[allowed].sum() > 0


@pytest.mark.parametrize("fixture", ["tiny_qwen2", "tiny_llama", "default_model"])
def test_our_mask_is_llguidances_own(request, fixture):
    """Walking through a schema, ``Constraint`` masks exactly as llguidance does on its own: its
    bitmask (``compute_bitmask``), its numpy application (``apply_token_bitmask_inplace``), and its
    parser's verdict that every allowed token is grammatical (``validate_tokens``), from a second
    matcher fed the same tokens."""
    tokenizer = Tokenizer(request.getfixturevalue(fixture))
    vocab = max(tokenizer.vocab_size, 512)
    grammars = Grammars(tokenizer, vocab, tokenizer.eos_token_ids)
    grammar = grammars.json_schema(SCHEMAS["nested objects"])
    rng = np.random.default_rng(7)
    for walk in range(3):
        ours = grammars.constraint(grammar, "schema")
        theirs = llguidance.LLMatcher(grammars.ll_tokenizer, grammar, log_level=0)
        for _ in range(40):
            allowed = ours.allowed()
            mask = np.frombuffer(theirs.compute_bitmask(), dtype=np.int32)
            bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[:vocab].astype(bool)
            np.testing.assert_array_equal(allowed, bits)
            logits = rng.standard_normal(vocab).astype(np.float32)
            reference = logits.copy()
            apply_token_bitmask_inplace(reference, mask[None, :].copy())
            np.testing.assert_array_equal(ours.apply(logits), reference)
            for token in np.flatnonzero(allowed[:tokenizer.vocab_size]):  # each allowed token is grammatical
                assert theirs.validate_tokens([int(token)]) == 1, token  # (the mask may be stricter: canonical
                #                                                          tokens only where the text is forced)
            token = int(rng.choice(np.flatnonzero(allowed)))
            if token in grammars.stop_ids:
                assert theirs.is_accepting()
                break
            assert theirs.consume_token(token)
            if ours.advance(token):
                assert theirs.is_stopped()
                break


def test_two_schemas_batched_together_each_valid(tiny_qwen2, monkeypatch):
    """Sequences with different schemas in one decode batch: one matcher each, masked row by row."""
    llm = awqinfer.load(tiny_qwen2)
    schemas = [SCHEMAS["array with min/max items"] | {"minItems": 4}, SCHEMAS["array of objects"] | {"minItems": 2},
               SCHEMAS["bounded integers"]]
    batches, sequences, real_step = [], [], llm.model.forward_batch
    monkeypatch.setattr(llm.model, "forward_batch", lambda tokens, caches, *a, **k: (
        batches.append([id(c) for c in caches]), real_step(tokens, caches, *a, **k))[1])
    real_sequence = Sequence.__init__
    monkeypatch.setattr(Sequence, "__init__", lambda self, *a, **k: (
        real_sequence(self, *a, **k), sequences.append(self))[0])
    streams = [llm.run(json_inputs(schema, seed=i + 1, stream=True)) for i, schema in enumerate(schemas)]
    texts = [joined(stream) for stream in streams]
    for schema, (text, last) in zip(schemas, texts):
        assert last["finish_reason"] == "stop", text
        jsonschema.validate(json.loads(text), schema)
    assert max(map(len, batches)) == len(schemas)  # all three stepped in one batch at least once
    assert all(seq.constraint is None for seq in sequences)  # finished: their matchers are freed
    for i, schema in enumerate(schemas):  # and each alone gives what it gave batched
        assert llm.run(json_inputs(schema, seed=i + 1))["response"] == json.loads(texts[i][0])


def test_a_cancelled_sequence_frees_its_matcher(tiny_qwen2):
    llm = awqinfer.load(tiny_qwen2)
    long = {"type": "array", "minItems": 200, "items": {"type": "integer"}}  # never done in max_tokens
    seq = Sequence(llm.model, llm.tokenizer.encode_chat(PROMPT), SamplingParams(max_tokens=1000, seed=1),
                   llm.stop_ids, constraint=llm.grammars.constraint(llm.grammars.json_schema(long), "x"))
    stream = llm.scheduler.submit(seq)
    next(iter(stream))
    stream.close()
    for _ in range(500):  # the engine thread retires it before its next step
        if seq.constraint is None:
            break
        time.sleep(0.01)
    assert seq.constraint is None and seq.generated < 1000


@pytest.mark.parametrize("fixture", ["tiny_qwen2", "tiny_llama", "default_model"])
def test_llguidance_reads_the_tokenizer_as_we_decode(request, fixture):
    """The adapter built from tokenizer.json sees each token's bytes as our detokenizer writes them."""
    tokenizer = Tokenizer(request.getfixturevalue(fixture))
    ll = Grammars(tokenizer, tokenizer.vocab_size, tokenizer.eos_token_ids).ll_tokenizer
    texts = ['{"name": "Zoë", "n": [1, -2.5e3], "ok": true}', "x = {'a': 1}\n\tprint(\"é\\u00e9\")", "ünï ☃ 😀"]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ll.decode_bytes(ids).decode("utf-8", "replace").lstrip(" ") == tokenizer.decode(ids).lstrip(" ")


def test_default_model_json(default_model):
    llm = awqinfer.load(default_model)
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "population", "tags"],
              "properties": {"city": {"type": "string", "maxLength": 30},
                             "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
                             "tags": {"type": "array", "items": {"enum": ["big", "old", "coastal"]}, "maxItems": 3}}}
    messages = [{"role": "user", "content": "Describe Paris as JSON with city, population and tags."}]
    for seed in (1, 2):
        inputs = {"messages": messages, "response_format": {"type": "json_schema", "json_schema": schema},
                  "seed": seed, "max_tokens": 80}
        out = llm.run(inputs)
        assert out["finish_reason"] == "stop"
        jsonschema.validate(out["response"], schema)
        text, last = joined(llm.run({**inputs, "stream": True}))
        assert json.loads(text) == out["response"] and last["usage"] == out["usage"]
