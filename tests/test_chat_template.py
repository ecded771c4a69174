"""Chat templates: our sandboxed rendering against transformers' apply_chat_template, for the three
template formats of the seed models (Llama-2 [INST] <<SYS>>, DeepSeek-Coder instruct, Qwen ChatML).

Both the rendered text and the prompt ids are compared (the ids show that the BOS the template
writes is not doubled by the tokenizer's post-processor).
"""

import json
import shutil

import pytest

import awqinfer
from awqinfer import CheckpointError, InputError, TemplateCheckpointError, TemplateInputError
from awqinfer.engine.text.inputs import parse_inputs
from awqinfer.engine.text.tokenizer import Tokenizer
from checkpoints import DEEPSEEK_CODER_TEMPLATE, set_chat_template

CONVERSATIONS = [
    [{"role": "user", "content": "What is the origin of the phrase Hello, World"}],
    [{"role": "system", "content": "You are a friendly assistant"},
     {"role": "user", "content": "Why is pizza so good"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi there  "},
     {"role": "assistant", "content": "Hello! 😀"}, {"role": "user", "content": "日本語で話して"}],
    [{"role": "user", "content": "def f(x):\n    return x"}, {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "more"}],
]


@pytest.fixture(scope="module")
def tiny_deepseek(tiny_llama, tmp_path_factory):
    """The tiny Llama checkpoint with DeepSeek-Coder-instruct's real template (BOS/EOS of the tiny vocab)."""
    directory = tmp_path_factory.mktemp("deepseek") / "model"
    shutil.copytree(tiny_llama, directory)
    return set_chat_template(directory, DEEPSEEK_CODER_TEMPLATE)


@pytest.fixture(scope="module")
def checkpoints(tiny_llama, tiny_qwen2, tiny_deepseek):
    return {"llama2": tiny_llama, "chatml": tiny_qwen2, "deepseek": tiny_deepseek}


def hf_tokenizer(directory):
    """transformers' fast tokenizer over exactly this tokenizer.json and tokenizer_config.json.

    (AutoTokenizer would pick Qwen2Tokenizer for model_type qwen2, which in transformers 5
    replaces tokenizer.json's pre-tokenizer with Qwen2's own regex.)
    """
    transformers = pytest.importorskip("transformers")
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("tokenizer_class", None)
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), **config)


def hf_ids(hf, messages, add_generation_prompt):
    out = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("fmt", ["llama2", "chatml", "deepseek"])
def test_rendering_and_ids_match_transformers(checkpoints, fmt):
    hf = hf_tokenizer(checkpoints[fmt])
    ours = Tokenizer(checkpoints[fmt])
    assert ours.has_chat_template
    for messages in CONVERSATIONS:
        for add_generation_prompt in (True, False):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            assert ours.apply_chat_template(messages, add_generation_prompt) == expected
        assert ours.encode_chat(messages) == hf_ids(hf, messages, True)


TOOL_TURN = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "Calling it."},
             {"role": "tool", "content": "{\"temp\": 21}"}]


@pytest.mark.parametrize("fmt", ["llama2", "chatml", "deepseek"])
def test_tool_role_renders_or_fails_as_in_transformers(checkpoints, fmt):
    hf = hf_tokenizer(checkpoints[fmt])
    ours = Tokenizer(checkpoints[fmt])
    try:
        expected = hf.apply_chat_template(TOOL_TURN, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # Llama-2's template refuses a third turn that is not the user's
        with pytest.raises(InputError, match="alternate"):
            ours.apply_chat_template(TOOL_TURN)
        assert "alternate" in str(e) and fmt == "llama2"
        return
    assert ours.apply_chat_template(TOOL_TURN) == expected


def test_the_three_formats_look_as_expected(checkpoints):
    messages = CONVERSATIONS[1]
    llama = Tokenizer(checkpoints["llama2"]).apply_chat_template(messages)
    assert llama == "<s>[INST] <<SYS>>\nYou are a friendly assistant\n<</SYS>>\n\nWhy is pizza so good [/INST]"
    chatml = Tokenizer(checkpoints["chatml"]).apply_chat_template(messages)
    assert chatml.endswith("<|im_start|>user\nWhy is pizza so good<|im_end|>\n<|im_start|>assistant\n")
    deepseek = Tokenizer(checkpoints["deepseek"]).apply_chat_template(messages)
    assert deepseek == "<s>You are a friendly assistant### Instruction:\nWhy is pizza so good\n### Response:\n"
    default_system = Tokenizer(checkpoints["deepseek"]).apply_chat_template(CONVERSATIONS[0])
    assert "utilizing the Deepseek Coder model" in default_system


def test_single_bos_when_the_template_writes_it(checkpoints):
    tok = Tokenizer(checkpoints["llama2"])
    ids = tok.encode_chat(CONVERSATIONS[0])
    assert ids[0] == 1 and ids[1] != 1


def test_prompt_goes_through_the_template_as_a_user_message(checkpoints):
    llm = awqinfer.load(checkpoints["chatml"])
    tok = llm.tokenizer
    as_prompt = llm.prompt_ids(parse_inputs({"prompt": "Tell me a story"}))
    as_messages = llm.prompt_ids(parse_inputs({"messages": [{"role": "user", "content": "Tell me a story"}]}))
    assert as_prompt == as_messages
    raw = llm.prompt_ids(parse_inputs({"prompt": "Tell me a story", "raw": True}))
    assert raw == tok.encode("Tell me a story")


def test_raw_prompt_gets_one_bos(checkpoints):
    tok = Tokenizer(checkpoints["llama2"])
    assert tok.encode_raw("Hello")[:2] == [1, tok.encode("Hello", add_special_tokens=False)[0]]
    already = tok.encode_raw("<s>[INST] Hello [/INST]")
    assert already[0] == 1 and already[1] != 1


def test_template_exceptions_become_input_errors(checkpoints):
    """raise_exception is the template refusing the conversation: the request's fault, naming the template."""
    tok = Tokenizer(checkpoints["llama2"])
    with pytest.raises(TemplateInputError, match="messages: .*tokenizer_config.json.*alternate user/assistant"):
        tok.apply_chat_template([{"role": "assistant", "content": "I start"}])
    with pytest.raises(InputError, match="messages: expected a list of"):
        tok.apply_chat_template([["role", "user"]])
    # a turn the template cannot take (content not a string): the conversation's fault, with the line
    with pytest.raises(TemplateInputError, match=r"fails on this conversation \(line 1\): TypeError"):
        Tokenizer(checkpoints["chatml"]).apply_chat_template([{"role": "user", "content": None}])


def test_checkpoint_without_template_gets_the_plain_fallback(tiny_qwen2, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(tiny_qwen2, directory)
    set_chat_template(directory, None)
    tok = Tokenizer(directory)
    assert not tok.has_chat_template
    text = tok.apply_chat_template(CONVERSATIONS[1])
    assert text == "system: You are a friendly assistant\nuser: Why is pizza so good\nassistant:"
    set_chat_template(directory, None, bos_token="<|endoftext|>")
    assert Tokenizer(directory).apply_chat_template(CONVERSATIONS[0]).startswith("<|endoftext|>user: ")


def test_chat_template_jinja_file_wins(tiny_qwen2, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(tiny_qwen2, directory)
    (directory / "chat_template.jinja").write_text("{% for m in messages %}<{{ m['content'] }}>{% endfor %}")
    expected = "<What is the origin of the phrase Hello, World>"
    assert Tokenizer(directory).apply_chat_template(CONVERSATIONS[0]) == expected


def test_templates_run_sandboxed(tiny_qwen2, tmp_path):
    """A template that reaches for Python's internals or mutates its inputs is the checkpoint's fault.

    (tests/test_template_limits.py has the hostile templates that try to exhaust memory or time.)
    """
    directory = tmp_path / "model"
    shutil.copytree(tiny_qwen2, directory)
    for source, words in [("{{ messages.append({'role': 'x'}) }}", "'append' of 'list'"),
                          ("\n{{ ''.__class__.__mro__ }}", "'__class__' of 'str'")]:
        set_chat_template(directory, source)
        with pytest.raises(TemplateCheckpointError) as e:
            Tokenizer(directory).apply_chat_template(CONVERSATIONS[0])
        assert "tokenizer_config.json: the chat template tries to leave its sandbox" in str(e.value)
        assert words in str(e.value) and isinstance(e.value, CheckpointError)
    (directory / "chat_template.jinja").write_text("{% for m in messages %}\n{{ m.content %}")
    with pytest.raises(TemplateCheckpointError, match=r"chat_template.jinja: .* not valid jinja \(line 2"):
        Tokenizer(directory)


def test_the_llm_bounds_its_template_by_the_models_context(tiny_qwen2):
    """LLM passes the model's context to the tokenizer: tokens x the longest token's characters."""
    llm = awqinfer.load(tiny_qwen2)
    longest = max(map(len, llm.tokenizer._tok.get_vocab(with_added_tokens=True)))
    assert llm.model.config.max_position_embeddings == 256
    assert llm.tokenizer.chat_template.limits.max_chars == max(1 << 16, 256 * longest)
    with pytest.raises(TemplateInputError, match="messages: longer than the model's context can hold"):
        llm.run({"messages": [{"role": "user", "content": "x" * 70_000}]})


TOOLS_TEMPLATE = (  # the tools part of Qwen2.5's template
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}"
    "{{- tool | tojson }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_tools_reach_the_template_as_in_transformers(tiny_qwen2, tmp_path):
    """tools= renders through the same limited sandbox, tojson and all, as transformers renders it."""
    directory = tmp_path / "model"
    shutil.copytree(tiny_qwen2, directory)
    set_chat_template(directory, TOOLS_TEMPLATE)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Le temps qu'il fait, °C",
                                                "parameters": {"type": "object", "properties": {
                                                    "city": {"type": "string"}}, "required": ["city"]}}}]
    expected = hf_tokenizer(directory).apply_chat_template(CONVERSATIONS[0], tools=tools, tokenize=False,
                                                           add_generation_prompt=True)
    assert Tokenizer(directory).apply_chat_template(CONVERSATIONS[0], tools=tools) == expected
    assert '"description": "Le temps qu\'il fait, °C"' in expected
