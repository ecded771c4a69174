"""The input schema, field by field: good values accepted, every kind of bad value refused by name."""

import math
import re

import pytest

from awqinfer import InputError
from awqinfer.engine.text.inputs import MAX_CHARS, ROLES, parse_inputs
from awqinfer.engine.text.sampling import SamplingParams

BASE = {"prompt": "Tell me a story"}

# field -> (good values, bad values, the allowed range as the message says it)
NUMBERS = {
    "max_tokens": ([1, 2, 256, 10**6, 7.0, 10**400], [0, -1, 2.5, True, "3", None, [], math.nan, math.inf], ">= 1"),
    "temperature": ([0, 0.0, 0.6, 3, 5, 5.0], [-0.1, 5.01, True, "0.5", None, {}, math.nan, -math.inf, 10**400,
                                                 10**5000],
                    "0..5"),
    "top_p": ([0, 0.5, 1, 1.7, 2], [-1e-9, 2.0001, False, "1", None, math.nan, math.inf], "0..2"),
    "top_k": ([1, 25, 50, 3.0], [0, 51, 2.5, True, "5", None, math.nan, math.inf], "1..50"),
    "seed": ([1, 42, 9999999999], [0, -5, 10**10, 1.5, True, "42", None, math.nan], "1..9999999999"),
    "repetition_penalty": ([0, 0.5, 1, 2], [-0.5, 2.5, True, "1", None, math.nan, math.inf], "0..2"),
    "frequency_penalty": ([0, 1.2, 2], [-1, 3, False, "0", None, math.nan, math.inf], "0..2"),
    "presence_penalty": ([0, 0.3, 2], [-0.01, 2.01, True, "x", None, math.nan, -math.inf], "0..2"),
}


@pytest.mark.parametrize("field", NUMBERS)
def test_numeric_fields(field):
    good, bad, allowed = NUMBERS[field]
    for value in good:
        params = parse_inputs({**BASE, field: value}).sampling
        assert getattr(params, field) == value
    for value in bad:
        with pytest.raises(InputError) as err:
            parse_inputs({**BASE, field: value})
        message = str(err.value)
        shown = "an integer of 16610 bits" if value == 10**5000 else repr(value)[:40]  # (too long to repr)
        assert message.startswith(f"{field}: got {shown}") and allowed in message, message


@pytest.mark.parametrize("field", ["raw", "stream"])
def test_flags(field):
    for value in (True, False):
        assert getattr(parse_inputs({**BASE, field: value}), field) is value
    for value in (1, 0, "true", None, [True]):
        with pytest.raises(InputError, match=rf"^{field}: got {re.escape(repr(value))}.*true or false"):
            parse_inputs({**BASE, field: value})


def test_defaults():
    request = parse_inputs(BASE)
    assert request.prompt == BASE["prompt"] and request.messages is None
    assert request.raw is False and request.stream is False
    assert request.sampling == SamplingParams(max_tokens=256, temperature=0.6)


def test_prompt_lengths():
    assert parse_inputs({"prompt": "x"}).prompt == "x"
    assert len(parse_inputs({"prompt": "é" * MAX_CHARS}).prompt) == MAX_CHARS  # characters, not bytes
    for value, shown in [("", "a string of 0 characters"), ("x" * (MAX_CHARS + 1), f"{MAX_CHARS + 1} characters"),
                         (42, "42 (int)"), (None, "None"), (["hi"], "['hi']")]:
        with pytest.raises(InputError, match=rf"^prompt: got .*{re.escape(shown)}.*1\.\.{MAX_CHARS}"):
            parse_inputs({"prompt": value})


def test_unpaired_surrogates_are_refused():
    """json.loads accepts "\\ud800"; the tokenizer cannot encode it."""
    with pytest.raises(InputError, match=r"^prompt: got a string with an unpaired surrogate '\\ud800' at 1"):
        parse_inputs({"prompt": "a\ud800b"})
    with pytest.raises(InputError, match=r"^messages\[0\]\.content: .*surrogate"):
        parse_inputs({"messages": [{"role": "user", "content": "\udfff"}]})


def test_messages_good():
    messages = [{"role": role, "content": f"{role} says hi"} for role in ROLES]
    messages.append({"role": "user", "content": ""})
    messages.append({"role": "user", "content": "y" * MAX_CHARS})
    request = parse_inputs({"messages": messages, "stream": True, "temperature": 0})
    assert request.prompt is None and list(request.messages) == messages and request.stream


@pytest.mark.parametrize("messages,match", [
    ("hi", r"^messages: got 'hi'.*array"),
    ([], r"^messages: got an empty array; allowed: at least one"),
    ({"role": "user", "content": "hi"}, r"^messages: got \{.*array"),
    (["hi"], r"^messages\[0\]: got 'hi'.*'role' and 'content'"),
    ([{"role": "user"}], r"^messages\[0\]: got .*exactly 'role' and 'content'"),
    ([{"content": "hi"}], r"^messages\[0\]: "),
    ([{"role": "user", "content": "hi", "name": "bob"}], r"^messages\[0\]: got .*'name'"),
    ([{"role": "user", "content": "ok"}, {"role": "robot", "content": "hi"}],
     r"^messages\[1\]\.role: got 'robot'.*system, user, assistant, tool"),
    ([{"role": None, "content": "hi"}], r"^messages\[0\]\.role: got None"),
    ([{"role": "user", "content": 5}], r"^messages\[0\]\.content: got 5 \(int\).*0\.\.131072"),
    ([{"role": "user", "content": "z" * (MAX_CHARS + 1)}], r"^messages\[0\]\.content: .*131073 characters"),
])
def test_messages_bad(messages, match):
    with pytest.raises(InputError, match=match):
        parse_inputs({"messages": messages})


@pytest.mark.parametrize("inputs,match", [
    ({}, "neither of 'prompt' and 'messages'"),
    ({"stream": True}, "neither of 'prompt' and 'messages'"),
    ({"prompt": "a", "messages": []}, "both of 'prompt' and 'messages'"),
    ({"prompt": "a", "max_token": 5}, r"^unknown field 'max_token' \(value 5 \(int\)\); allowed fields: .*max_tokens"),
    ({"prompt": "a", 3: 5}, "unknown field 3"),
    ({"messages": [], "raw": True}, r"^raw: got True .*only with 'prompt'"),
    (["prompt"], r"^inputs: got \['prompt'\] \(list\)"),
    ("Tell me", r"^inputs: got 'Tell me' \(str\)"),
    (None, r"^inputs: got None"),
])
def test_structure(inputs, match):
    with pytest.raises(InputError, match=match):
        parse_inputs(inputs)


@pytest.mark.parametrize("field,value", [("lora", "my-adapter"), ("image", [0, 255]), ("image", "bytes"),
                                         ("tools", [{"name": "f", "description": "d", "parameters": {}}]),
                                         ("tools", []), ("functions", [{"name": "f", "code": "x"}])])
def test_schema_fields_not_implemented_are_refused_not_ignored(field, value):
    base = {"prompt": "a"} if field in ("lora", "image") else {"messages": [{"role": "user", "content": "a"}]}
    with pytest.raises(InputError, match=rf"^{field}: not supported by this model/engine yet"):
        parse_inputs({**base, field: value})


def test_input_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_inputs({"prompt": "a", "temperature": 9})
