"""Fitting a conversation into the context: whole oldest turns go, system messages and the last turn stay."""

import pytest

import awqinfer
from awqinfer.engine.model.cache import max_context
from awqinfer.engine.text.context import drop_oldest_turn, fit_messages


def m(role, content):
    return {"role": role, "content": content}


SYSTEM, U1, A1, U2, A2, U3 = m("system", "be brief"), m("user", "u1"), m("assistant", "a1"), m("user", "u2"), \
    m("assistant", "a2"), m("user", "u3")


def test_turns_go_whole_and_oldest_first():
    assert drop_oldest_turn([SYSTEM, U1, A1, U2, A2, U3]) == [SYSTEM, U2, A2, U3]
    assert drop_oldest_turn([SYSTEM, U2, A2, U3]) == [SYSTEM, U3]
    assert drop_oldest_turn([SYSTEM, U3]) is None  # the message being answered is never dropped
    assert drop_oldest_turn([U3]) is None


def test_system_messages_stay_wherever_they_are():
    late = m("system", "now in French")
    assert drop_oldest_turn([U1, A1, late, m("tool", "t"), U2, A2, U3]) == [late, U2, A2, U3]


def test_a_reply_before_any_user_message_is_a_turn_of_its_own():
    greeting = m("assistant", "Hi! How can I help?")
    assert drop_oldest_turn([SYSTEM, greeting, U1, A1, U2]) == [SYSTEM, U1, A1, U2]


def test_fit_drops_only_what_the_budget_needs():
    conversation = [SYSTEM, U1, A1, U2, A2, U3]
    length = lambda ms: sum(len(x["content"]) for x in ms)  # noqa: E731 -- a stand-in for token counts
    assert fit_messages(conversation, length, 100) == (conversation, 0)
    assert fit_messages(conversation, length, length([SYSTEM, U2, A2, U3])) == ([SYSTEM, U2, A2, U3], 2)
    assert fit_messages(conversation, length, 1) == ([SYSTEM, U3], 4)  # over budget still: the caller's call


def test_llm_fit_messages_leaves_room_for_the_reply(tiny_qwen2):
    llm = awqinfer.load(tiny_qwen2)
    context = max_context(llm.model.config)
    turns = []
    for i in range(40):
        turns += [m("user", f"question number {i} about things"), m("assistant", f"answer number {i}")]
    conversation = [SYSTEM, *turns, m("user", "and the last one?")]
    assert len(llm.tokenizer.encode_chat(conversation)) > context
    kept, dropped = llm.fit_messages(conversation, max_tokens=16)
    assert dropped > 0 and kept == [SYSTEM, *turns[dropped:], conversation[-1]]
    assert len(llm.tokenizer.encode_chat(kept)) + 16 <= context
    one_more = [SYSTEM, *turns[dropped - 2:], conversation[-1]]  # the turn before was needed to make room
    assert len(llm.tokenizer.encode_chat(one_more)) + 16 > context
    assert llm.run({"messages": kept, "max_tokens": 16, "temperature": 0})["usage"]["prompt_tokens"] <= context - 16


def test_llm_fit_messages_checks_its_inputs(tiny_qwen2):
    llm = awqinfer.load(tiny_qwen2)
    with pytest.raises(awqinfer.InputError, match=r"^messages\[0\]\.role"):
        llm.fit_messages([{"role": "robot", "content": "hi"}])
    with pytest.raises(awqinfer.InputError, match="^messages: got an empty array"):
        llm.fit_messages([])
    with pytest.raises(awqinfer.InputError, match="^max_tokens"):
        llm.fit_messages([U1], max_tokens=0)
