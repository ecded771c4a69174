"""Hostile chat templates: every one ends in an awqinfer TemplateError, in bounded time and memory.

Each case renders in its own forked process with an address-space limit (isolation.py), so a
regression fails its case with a MemoryError or a timeout instead of taking the machine down.
The limits are those of the default model (8,192 tokens x 81 characters); a case passes when
it raised the expected TemplateError kind with the expected words, within 10 s and 256 MB,
and the message says nothing of a MemoryError.
"""

import sys
import threading
from pathlib import Path

import pytest

from awqinfer import TemplateCheckpointError, TemplateError, TemplateInputError
from awqinfer.engine.text.chat_template import ChatTemplate
from awqinfer.engine.text.template_limits import RenderLimits
from checkpoints import CHATML_TEMPLATE, DEEPSEEK_CODER_TEMPLATE, LLAMA2_TEMPLATE
from isolation import isolated  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc: Linux only")

LIMITS = RenderLimits.for_context(8192, 81)  # the default model's
ORIGIN = Path("hostile") / "chat_template.jinja"
MESSAGES = [{"role": "user", "content": "Hello"}]
DOUBLING = "{% set ns = namespace(v=START) %}{% for i in range(64) %}{% set ns.v = STEP %}{% endfor %}{{ ns.v }}"
SHARED = "{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(60) %}" \
         "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}"
SHARED_TUPLE = "{% set ns = namespace(a=(1,)) %}{% for i in range(60) %}{% set ns.a = (ns.a, ns.a) %}{% endfor %}"

CHECKPOINT, INPUT = "TemplateCheckpointError", "TemplateInputError"
# (case, template, variables beyond messages, expected kind, words the message must hold (or one of them))
HOSTILE = [
    ("string multiplication", "{{ 'x' * 10**9 }}", {}, CHECKPOINT, "1,000,000,000 characters with '*'"),
    ("list multiplication", "{{ [0] * 10**9 }}", {}, CHECKPOINT, "characters with '*'"),
    ("doubling with +", DOUBLING.replace("START", "'x'").replace("STEP", "ns.v + ns.v"), {}, CHECKPOINT, "'+'"),
    ("doubling with ~", DOUBLING.replace("START", "'x'").replace("STEP", "ns.v ~ ns.v"), {}, CHECKPOINT, "'~'"),
    ("doubling a list", DOUBLING.replace("START", "[0]").replace("STEP", "ns.v + ns.v"), {}, CHECKPOINT, "'+'"),
    ("a long loop", "{% for i in range(10**9) %}x{% endfor %}", {}, CHECKPOINT, "1,000,000,000 numbers"),
    ("nested loops within the range limit",
     "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", {}, CHECKPOINT,
     ("loop iterations", "would build 663,619 characters with its output")),
    ("nested loops writing nothing", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
     "{% endfor %}", {}, CHECKPOINT, "loop iterations"),
    ("loops over the messages' text", "{% for m in messages %}{% for a in m.content %}{% for b in m.content %}"
     "{% for c in m.content %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}",
     {"messages": [{"role": "user", "content": "x" * 1000}]}, CHECKPOINT, "loop iterations"),
    ("output in a loop", "{% for i in range(100000) %}{{ 'y' * 100000 }}{% endfor %}", {}, CHECKPOINT,
     "characters"),
    ("a set block growing in a loop", "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set x %}"
     "{{ ns.s }}{{ ns.s }}y{% endset %}{% set ns.s = x %}{% endfor %}", {}, CHECKPOINT, "characters"),
    ("a macro that calls itself", "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}", {}, CHECKPOINT,
     "the macro 'm' more than 64 deep"),
    ("a macro that calls itself twice", "{% macro m(n) %}{{ m(n) }}{{ m(n) }}{% endmacro %}{{ m(0) }}", {},
     CHECKPOINT, "runaway recursion"),
    ("a block that renders itself", "{% block a %}{{ self.a() }}{% endblock %}", {}, CHECKPOINT, "the block 'a'"),
    ("a recursive loop", "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", {}, CHECKPOINT,
     "a recursive loop"),
    ("nested caller loops", "{% macro m() %}{% for i in range(100000) %}{{ caller() }}{% endfor %}{% endmacro %}"
     "{% call m() %}{% call m() %}x{% endcall %}{% endcall %}", {}, CHECKPOINT, "runs "),
    ("raise_exception", "{{ raise_exception('roles must alternate') }}", {}, INPUT,
     "rejects this conversation: roles must alternate"),
    ("an attribute escape", "{{ ''.__class__.__mro__[1].__subclasses__() }}", {}, CHECKPOINT,
     "leave its sandbox"),
    ("mutating the messages", "{{ messages.append(1) }}", {}, CHECKPOINT, "leave its sandbox"),
    ("a huge integer", "{{ 10**10000000000 }}", {}, CHECKPOINT, "bits with '**'"),
    ("a product of huge integers", "{% set ns = namespace(v=10**1000) %}{% for i in range(40) %}"
     "{% set ns.v = ns.v * ns.v %}{% endfor %}", {}, CHECKPOINT, "bits with '*'"),
    ("center", "{{ 'x'|center(10**9) }}", {}, CHECKPOINT, "the filter 'center'"),
    ("indent", "{{ ('\\n' * 60000)|indent(60000) }}", {}, CHECKPOINT, "the filter 'indent'"),
    ("replace", "{{ ('x' * 60000)|replace('x', 'y' * 60000) }}", {}, CHECKPOINT, "the filter 'replace'"),
    ("wordwrap", "{{ ('a ' * 10000)|wordwrap(1, wrapstring='w' * 100) }}", {}, CHECKPOINT, "'wordwrap'"),
    ("wordwrap on much text", "{{ ('-' * 300000)|wordwrap(1) }}", {}, CHECKPOINT, "at most 65,536"),
    ("the format filter", "{{ '%1000000000s'|format('x') }}", {}, CHECKPOINT, "the filter 'format'"),
    ("join", "{{ ('x' * 60000).join(['y'] * 60000) }}", {}, CHECKPOINT, "join()"),
    ("the join filter", "{{ (['y'] * 60000)|join('x' * 60000) }}", {}, CHECKPOINT, "the filter 'join'"),
    ("str.format width", "{{ '{:>1000000000}'.format('x') }}", {}, CHECKPOINT, "str.format()"),
    ("str.format nested width", "{{ '{:>{}}'.format('x', 10**9) }}", {}, CHECKPOINT, "str.format()"),
    ("% width", "{{ '%1000000000s' % 'x' }}", {}, CHECKPOINT, "with '%'"),
    ("% star width", "{{ '%*s' % (10**9, 'x') }}", {}, CHECKPOINT, "with '%'"),
    ("expandtabs", "{{ ('\\t' * 60000).expandtabs(60000) }}", {}, CHECKPOINT, "expandtabs()"),
    ("ljust", "{{ 'x'.ljust(10**9) }}", {}, CHECKPOINT, "ljust()"),
    ("to_bytes", "{{ (1).to_bytes(10**9, 'big') }}", {}, CHECKPOINT, "to_bytes()"),
    ("translate", "{{ ('x' * 60000).translate({120: 'y' * 60000}) }}", {}, CHECKPOINT, "translate()"),
    ("slice", "{{ [1]|slice(10**9)|list }}", {}, CHECKPOINT, "the filter 'slice'"),
    ("batch", "{{ [1]|batch(10**9, 'x')|list }}", {}, CHECKPOINT, "the filter 'batch'"),
    ("dict.fromkeys", "{{ dict.fromkeys(range(100000), 'x' * 100000) }}", {}, CHECKPOINT, "writes a value"),
    ("tojson indent", "{{ messages|tojson(indent=10**9) }}", {}, CHECKPOINT, "indent"),
    ("tojson escaping much text", "{{ ('\\x01' * 150000)|tojson }}", {}, CHECKPOINT, "with tojson"),
    ("tojson of a shared structure", SHARED + "{{ ns.a|tojson }}", {}, CHECKPOINT, "'tojson' a value"),
    ("printing a shared structure", SHARED + "{{ ns.a }}", {}, CHECKPOINT, "writes a value"),
    ("comparing shared structures", SHARED + "{{ ns.a == ns.b }}", {}, CHECKPOINT, "compares or hashes"),
    ("sorting shared structures", SHARED + "{{ [ns.a, ns.b]|sort }}", {}, CHECKPOINT, "the filter 'sort'"),
    ("hashing a shared tuple", SHARED_TUPLE + "{{ {ns.a: 1} }}", {}, CHECKPOINT, "compares or hashes"),
    ("a shared tuple in 'in'", SHARED_TUPLE + "{{ ns.a in [1] }}", {}, CHECKPOINT, "compares or hashes"),
    ("strftime_now", "{{ strftime_now('%c' * 100000) }}", {}, CHECKPOINT, "strftime_now()"),
    ("lipsum", "{{ lipsum(10**6) }}", {}, INPUT, "'lipsum' is undefined"),
    ("a huge tools description", "{{ tools|tojson }}",
     {"tools": [{"name": "f", "description": "d" * 1_000_000}]}, INPUT, "tools: longer than the model's context"),
    ("a tools description multiplied", "{{ tools[0].description * 1000 }}",
     {"tools": [{"name": "f", "description": "d" * 10_000}]}, CHECKPOINT, "characters with '*'"),
    ("round to a huge precision", "{{ 5|round(-10**9, 'ceil') }}", {}, CHECKPOINT, "the filter 'round'"),
    ("a syntax error", "{% for %}", {}, CHECKPOINT, "not valid jinja"),
    ("a template too long to compile", "a{{ x }}" * 10_000, {}, CHECKPOINT, "over 65,536 characters"),
    ("nesting too deep to compile", "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", {}, CHECKPOINT, "chat template"),
]


def render_case(source: str, variables: dict):
    """In the isolated child: compile and render ``source`` under the default model's limits."""
    text = ChatTemplate(source, ORIGIN, LIMITS).render(**{"messages": MESSAGES, **variables})
    return {"length": len(text), "start": text[:200]}


@pytest.mark.parametrize("case,source,variables,kind,words", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_template_ends_in_a_template_error(isolated, case, source, variables, kind, words):
    result = isolated.run("test_template_limits:render_case", source, variables, memory_mb=1024, seconds=20)
    assert result["status"] == "raised", result
    assert "TemplateError" in result["types"] and kind in result["types"], result
    message = result["message"]
    assert any(w in message for w in (words if isinstance(words, tuple) else (words,))), message
    assert str(ORIGIN) in message or kind == INPUT, message
    assert "MemoryError" not in message and "Recursion" not in result["types"], result
    assert result["seconds"] < 10, result
    assert result["grew_mb"] < 256, result


def test_the_longest_template_allowed_compiles_in_bounded_time_and_memory(isolated):
    result = isolated.run("test_template_limits:render_case", "{{ x }}a" * (65536 // 8), {}, memory_mb=1024)
    assert result["status"] == "returned" and result["value"]["length"] == 8192, result
    assert result["seconds"] < 10 and result["grew_mb"] < 256, result


REAL = {"llama2": LLAMA2_TEMPLATE, "chatml": CHATML_TEMPLATE, "deepseek": DEEPSEEK_CODER_TEMPLATE}


@pytest.mark.parametrize("name", REAL)
def test_real_templates_render_a_long_conversation(isolated, name):
    """The limits refuse nothing real: 1,500 turns, 460,000 characters, render as they would unlimited."""
    turns = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} " + "word " * 60} for i in range(1500)]
    variables = {"messages": turns, "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": True}
    result = isolated.run("test_template_limits:render_case", REAL[name], variables, memory_mb=1024, seconds=60)
    assert result["status"] == "returned", result
    assert result["value"]["length"] > 460_000


def test_the_limits_follow_the_context():
    """max_chars is context x the longest token; a conversation longer than that is the request's fault."""
    small = RenderLimits.for_context(1000, 100)
    assert small.max_chars == 100_000 and "1,000 tokens" in small.why
    assert RenderLimits.for_context(10, 5).max_chars == 1 << 16  # the floor
    template = ChatTemplate(CHATML_TEMPLATE, ORIGIN, small)
    template.render(messages=[{"role": "user", "content": "x" * 90_000}])
    with pytest.raises(TemplateInputError, match="messages: longer than the model's context can hold"):
        template.render(messages=[{"role": "user", "content": "x" * 100_001}])


def test_the_time_limit_holds_in_any_thread():
    """The clock is checked by the sandbox itself, so a render in a worker thread stops too (no signals)."""
    limits = RenderLimits(seconds=0.2, loop_steps=10**12)
    template = ChatTemplate("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                            ORIGIN, limits)
    errors = []

    def render():
        try:
            template.render(messages=MESSAGES)
        except TemplateError as e:
            errors.append(e)

    thread = threading.Thread(target=render)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TemplateCheckpointError)
    assert "runs for more than 0.2 s" in str(errors[0]) and "(line 1)" in str(errors[0])


def test_concurrent_renders_have_their_own_budgets():
    """Two threads rendering at once: one hostile, one legitimate; only the hostile one fails."""
    hostile = ChatTemplate("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                           ORIGIN, LIMITS)
    fine = ChatTemplate(CHATML_TEMPLATE, ORIGIN, LIMITS)
    outcome = {}

    def run(name, template):
        try:
            outcome[name] = [template.render(messages=MESSAGES) for _ in range(200)][-1]
        except TemplateError as e:
            outcome[name] = e

    threads = [threading.Thread(target=run, args=args) for args in (("hostile", hostile), ("fine", fine))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert isinstance(outcome["hostile"], TemplateCheckpointError)
    assert outcome["fine"].endswith("<|im_start|>user\nHello<|im_end|>\n")


def test_a_templates_own_message_is_cut_short():
    """raise_exception with megabytes of text: the error quotes 500 characters of it, and says how long it was."""
    template = ChatTemplate("{{ raise_exception('no ' * 200000) }}", ORIGIN, LIMITS)
    with pytest.raises(TemplateInputError) as e:
        template.render(messages=MESSAGES)
    assert len(str(e.value)) < 700 and "(600,000 characters)" in str(e.value)
