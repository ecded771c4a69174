"""The ``awqinfer`` command line, run for real in subprocesses (``python -m awqinfer`` and the script)."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import awqinfer

GREEDY = ["--max-tokens", "8", "--temperature", "0"]


def cli(*args, stdin=None, env=None, timeout=300):
    """Run ``python -m awqinfer ARGS``; returns the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, "-m", "awqinfer", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


COMPILE_NOTE = "awqinfer: compiling the kernels once"  # printed whenever Numba's cache misses (cold cache)


def one_line_error(proc, *needles):
    """stderr is exactly one line (besides a cold cache's compile note), names every needle, no traceback."""
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith(COMPILE_NOTE)]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_run_streamed_json_and_stdin_agree(tiny_qwen2):
    streamed = cli("run", "--model", tiny_qwen2, *GREEDY, "Hello, world")
    assert streamed.returncode == 0, streamed.stderr
    as_json = cli("run", "--model", tiny_qwen2, *GREEDY, "--json", "Hello, world")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert set(result) >= {"response", "usage"}
    api = awqinfer.load(tiny_qwen2).run({"prompt": "Hello, world", "max_tokens": 8, "temperature": 0})
    assert result == api  # the same answer, usage counts included, as the Python API gives
    assert streamed.stdout == result["response"] + "\n"  # the stream and the result are the same text
    piped = cli("run", "--model", tiny_qwen2, *GREEDY, "-", stdin="Hello, world")
    assert piped.returncode == 0 and piped.stdout == streamed.stdout
    # the same answer the Python API gives
    llm = awqinfer.load(tiny_qwen2)
    assert llm.run({"prompt": "Hello, world", "max_tokens": 8, "temperature": 0})["response"] == result["response"]


def test_console_script_and_system_flag(tiny_qwen2):
    # where pip put it: beside this interpreter (a venv's bin/, on PATH only once activated), else on PATH
    script = shutil.which("awqinfer", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    assert script, "the awqinfer console script is not installed (pip install -e .)"
    proc = subprocess.run([script, "run", "--model", str(tiny_qwen2), *GREEDY, "--json", "--system", "Be brief",
                           "Hi"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    llm = awqinfer.load(tiny_qwen2)
    expect = llm.run({"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
                      "max_tokens": 8, "temperature": 0})
    assert json.loads(proc.stdout)["response"] == expect["response"]


@pytest.mark.parametrize("flags,needle", [
    (["--temperature", "9"], "--temperature"),
    (["--top-k", "abc"], "--top-k"),
    (["--max-tokens", "0"], "--max-tokens"),
    (["--top-p", "nan"], "--top-p"),
    (["--seed", "0"], "--seed"),
    (["--device", "tpu"], "--device"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_bad_flag_values_are_one_line_and_exit_2(tiny_qwen2, flags, needle):
    proc = cli("run", "--model", tiny_qwen2, *flags, "Hello")
    assert proc.returncode == 2
    line = one_line_error(proc, needle)
    assert line.startswith("awqinfer run: error: ")  # named by the subcommand, as its --help is
    assert line.endswith("(see awqinfer run --help)")
    assert proc.stdout == ""


def test_input_errors_from_run_exit_2(tiny_qwen2):
    empty = cli("run", "--model", tiny_qwen2, "")  # the schema wants 1..131072 characters
    assert empty.returncode == 2
    one_line_error(empty, "prompt")
    both = cli("run", "--model", tiny_qwen2, "--raw", "--system", "x", "Hello")
    assert both.returncode == 2
    one_line_error(both, "--raw", "--system")


def test_unknown_model_name(tmp_path):
    proc = cli("run", "--model", "no-such-model", "Hello")
    assert proc.returncode == 1
    one_line_error(proc, "no-such-model", "@cf/meta/llama-2-7b-chat-int8")
    missing = cli("run", "--model", tmp_path / "nothing" / "here", "Hello")
    assert missing.returncode == 1
    one_line_error(missing, "nothing")


def test_chat_keeps_history_over_two_turns(tiny_qwen2):
    proc = cli("chat", "--model", tiny_qwen2, *GREEDY, stdin="Hello there\nAnd again?\n")
    assert proc.returncode == 0, proc.stderr
    llm = awqinfer.load(tiny_qwen2)
    params = {"max_tokens": 8, "temperature": 0}
    history = [{"role": "user", "content": "Hello there"}]
    first = llm.run({"messages": history, **params})["response"]
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "And again?"}]
    second = llm.run({"messages": history, **params})["response"]
    without_history = llm.run({"messages": [{"role": "user", "content": "And again?"}], **params})["response"]
    assert proc.stdout == f"{first}\n{second}\n"
    assert second != without_history or first == ""  # the second turn saw the first


def test_chat_reset_and_exit(tiny_qwen2):
    proc = cli("chat", "--model", tiny_qwen2, *GREEDY, stdin="Hello there\n/reset\nHello there\n/exit\nnever read\n")
    assert proc.returncode == 0, proc.stderr
    llm = awqinfer.load(tiny_qwen2)
    reply = llm.run({"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8, "temperature": 0})
    assert proc.stdout == f"{reply['response']}\n{reply['response']}\n"  # after /reset the same fresh answer


def test_models_lists_names_and_cache_state(tmp_path):
    proc = cli("models", "--json", env={"AWQINFER_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert {"smollm2-135m-instruct", "@hf/thebloke/deepseek-coder-6.7b-instruct-awq",
            "@cf/qwen/qwen1.5-7b-chat-awq", "@cf/meta/llama-2-7b-chat-int8"} <= set(rows)
    assert rows["smollm2-135m-instruct"]["cached"] is False and rows["smollm2-135m-instruct"]["default"]
    assert rows["@cf/meta/llama-2-7b-chat-int8"]["source"] == "meta-llama/Llama-2-7b-chat-hf"
    text = cli("models", env={"AWQINFER_CACHE": str(tmp_path)})
    assert "@cf/qwen/qwen1.5-7b-chat-awq" in text.stdout and str(tmp_path) in text.stdout


def test_convert_writes_the_same_directory_as_the_importer(smollm2_gguf, smollm2_fp32, tmp_path):
    out = tmp_path / "converted"
    proc = cli("convert", smollm2_gguf, out)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "model.safetensors"):
        assert (out / name).read_bytes() == (smollm2_fp32 / name).read_bytes(), name
    again = cli("convert", smollm2_gguf, out)  # never writes over a directory with files in it
    assert again.returncode == 2
    one_line_error(again, str(out))
    bad = cli("convert", tmp_path / "missing.gguf", tmp_path / "x")
    assert bad.returncode == 1
    one_line_error(bad, "missing.gguf")


def test_default_model_answers_from_the_cli(default_model):
    proc = cli("run", "--max-tokens", "12", "--temperature", "0", "What is the capital of France?")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


def test_ctrl_c_stops_generation_cleanly(default_model):
    # counting on from a raw prompt: a long reply whatever the build's weights (a story may end at once)
    proc = subprocess.Popen([sys.executable, "-m", "awqinfer", "run", "--max-tokens", "2000", "--temperature", "0",
                             "--raw", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy(),
                            # Ctrl-C as a terminal delivers it, even when pytest runs where SIGINT is ignored
                            # (a background job): an ignored SIGINT is inherited and Python keeps ignoring it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.read(1)  # generation has started
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert b"Traceback" not in err


def test_convert_awq_writes_a_loadable_quantized_checkpoint(tiny_qwen2, tmp_path):
    """GGUF -> AWQ 4-bit in one command, on a tiny GGUF written in llama.cpp's layout."""
    from test_gguf import write_tiny_gguf
    from checkpoints import random_weights, tiny_config, write_checkpoint

    config = tiny_config("llama", vocab_size=512)
    hf = write_checkpoint(tmp_path / "hf", config, random_weights(config, seed=5))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf / name).write_bytes((tiny_qwen2 / name).read_bytes())
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", hf)
    out = tmp_path / "awq"
    proc = cli("convert", gguf_path, out, "--awq", "--method", "rtn", "--group-size", "32")
    assert proc.returncode == 0, proc.stderr
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (quant["quant_method"], quant["bits"], quant["group_size"]) == ("awq", 4, 32)
    llm = awqinfer.load(out)
    result = llm.run({"prompt": "Hello", "max_tokens": 4, "temperature": 0})
    ids, cache = llm.tokenizer.encode_chat([{"role": "user", "content": "Hello"}]), llm.model.new_cache(64)
    logits = llm.model.forward(ids, cache)[-1]  # an independent greedy loop over the converted model
    greedy = []
    while len(greedy) < 4 and (not greedy or greedy[-1] not in llm.stop_ids):
        greedy.append(int(logits.argmax()))
        logits = llm.model.forward(greedy[-1:], cache)[-1]
    assert result["usage"]["completion_tokens"] == len(greedy)
    assert result["response"] == llm.tokenizer.decode([t for t in greedy if t not in llm.stop_ids])
    bad = cli("convert", gguf_path, tmp_path / "x", "--awq", "--group-size", "7")
    assert bad.returncode == 2
    one_line_error(bad, "--group-size")


def test_help_lists_every_subcommand():
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("run", "chat", "models", "convert", "quantize"):
        assert f"    {command} " in proc.stdout, command
    assert cli().returncode == 2  # no subcommand is a usage error


def test_ctrl_c_in_chat_keeps_the_partial_reply(tiny_qwen2, monkeypatch, capsys):
    """Ctrl-C during a reply stops it; what was shown stays in the conversation the next turn sees."""
    import io

    from awqinfer.cli import chat
    from awqinfer.cli.main import build_parser

    real = awqinfer.load(tiny_qwen2)
    seen = []  # the messages of every turn

    class CtrlCAfterThreeChunks:  # the real model, with a user who presses Ctrl-C during the first reply
        name, fit_messages = real.name, real.fit_messages

        def run(self, inputs, **kwargs):
            seen.append([dict(m) for m in inputs["messages"]])
            stream = real.run(inputs, **kwargs)
            for n, chunk in enumerate(stream):
                if len(seen) == 1 and n == 3:
                    stream.close()
                    raise KeyboardInterrupt
                yield chunk

    monkeypatch.setattr(chat, "load_model", lambda args: CtrlCAfterThreeChunks())
    monkeypatch.setattr("sys.stdin", io.StringIO("Tell me a story\nAnd then?\n"))
    args = build_parser().parse_args(["chat", "--max-tokens", "40", "--temperature", "0"])
    assert chat.main(args) == 0
    full = real.run({"messages": seen[0], "max_tokens": 40, "temperature": 0, "stream": True})
    partial = "".join(c["response"] for _, c in zip(range(3), full))
    assert partial and len(seen) == 2
    assert seen[1] == [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": partial},
                       {"role": "user", "content": "And then?"}]
    assert capsys.readouterr().out.startswith(partial + "\n")
