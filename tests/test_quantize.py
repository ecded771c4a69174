"""The quantizer: AutoAWQ's layout checked by the independent packer, config and files, sharding, errors."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

import awqinfer
from awqinfer.engine.checkpoint import safetensors as checkpoint_module
from awqinfer.engine.checkpoint.safetensors import Checkpoint
from awqinfer.engine.checkpoint.config import ModelConfig
from awqinfer.engine.quant.quantize import quantize
from awqinfer.errors import CheckpointError, InputError
from checkpoints import autoawq_unpack, awq_quantize, make_model

AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
              "modules_to_not_convert": None}


def read_all(directory) -> dict:
    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "fp16"])
def test_rtn_tensors_are_autoawq_round_to_nearest(fixture, request, tmp_path):
    if fixture == "fp16":
        src = make_model(tmp_path / "fp16", "qwen2", dtype=np.float16)
    else:
        src = request.getfixturevalue(fixture)
    out = quantize(src, tmp_path / "q", method="rtn", group_size=32, progress=False)
    source, written = read_all(src), read_all(out)
    linears = [n for n in source if n.endswith("_proj.weight")]
    assert linears
    for name in linears:
        module = name.removesuffix(".weight")
        expected = awq_quantize(source[name], 32)  # the test suite's own AutoAWQ packer
        for suffix in ("qweight", "qzeros", "scales"):
            got = written.pop(f"{module}.{suffix}")
            assert got.dtype == expected[suffix].dtype and got.shape == expected[suffix].shape, (module, suffix)
            np.testing.assert_array_equal(got, expected[suffix], err_msg=f"{module}.{suffix}")
        assert autoawq_unpack(expected["qweight"]).max() <= 15
    for name, t in written.items():  # embeddings, norms, biases, lm_head: fp16 copies
        assert t.dtype == np.float16, name
        np.testing.assert_array_equal(t, source[name].astype(np.float16), err_msg=name)
    assert set(written) == {n for n in source if not n.endswith("_proj.weight")}


def test_rtn_checkpoint_config_files_and_load(tiny_qwen2, tmp_path):
    out = quantize(tiny_qwen2, tmp_path / "q", method="rtn", group_size=32, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == AWQ_CONFIG
    assert config["torch_dtype"] == "float16"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_qwen2 / name).read_bytes()
    assert ModelConfig.load(out).quant.group_size == 32
    llm = awqinfer.load(out)
    assert np.isfinite(llm.model.forward([1, 2, 3], llm.model.new_cache(3))).all()


def test_large_checkpoints_are_sharded_with_an_index(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "SHARD_BYTES", 64 * 1024)
    out = quantize(tiny_llama, tmp_path / "q", method="rtn", group_size=32, progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists() and not list(out.glob("*.partial"))
    single = quantize(tiny_llama, tmp_path / "one", method="rtn", group_size=32, progress=False)
    assert read_all(out).keys() == read_all(single).keys()
    assert set(Checkpoint(out).tensors) == set(index["weight_map"])


def test_bad_arguments_are_clear_errors(tiny_llama, tiny_llama_awq, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        quantize(tmp_path / "missing", tmp_path / "q", method="rtn")
    with pytest.raises(InputError, match="group_size 48 does not divide in_features 64"):
        quantize(tiny_llama, tmp_path / "q", method="rtn", group_size=48)
    with pytest.raises(InputError, match="positive multiple of 8"):
        quantize(tiny_llama, tmp_path / "q", method="rtn", group_size=12)
    with pytest.raises(InputError, match="method must be one of"):
        quantize(tiny_llama, tmp_path / "q", method="gptq")
    with pytest.raises(CheckpointError, match="already quantized"):
        quantize(tiny_llama_awq, tmp_path / "q", method="rtn")
    with pytest.raises(InputError, match="must differ"):
        quantize(tiny_llama, tiny_llama, method="rtn")


# --- AWQ ---------------------------------------------------------------------


def layer_output(config, layer, x):
    from awqinfer.engine.model.backend import CPU
    from awqinfer.engine.model.forward import decoder_layer
    from awqinfer.engine.model.rope import cos_sin

    x = x.copy()
    k = np.zeros((config.num_key_value_heads, len(x), config.head_dim), np.float32)
    cos, sin = cos_sin(config.rope, config.head_dim, config.max_position_embeddings, 0, len(x))
    decoder_layer(CPU, config, layer, x, [(k, np.zeros_like(k), 0, slice(None))], cos, sin)
    return x


@pytest.mark.parametrize("arch,kv_heads", [("llama", 4), ("llama", 2), ("qwen2", 4)])
def test_folding_scales_leaves_the_float_layer_unchanged(arch, kv_heads, tmp_path):
    from awqinfer.engine.quant.awq_search import fold_scales, scaling_groups
    from awqinfer.engine.model.weights import load_layer

    src = make_model(tmp_path / "m", arch, kv_heads=kv_heads)
    config, ckpt = ModelConfig.load(src), Checkpoint(src)
    layer = load_layer(ckpt, config, 0)
    x = np.random.default_rng(1).standard_normal((9, config.hidden_size)).astype(np.float32)
    before = layer_output(config, layer, x)
    rng = np.random.default_rng(2)
    folded = []
    for group in scaling_groups(config, layer):
        if group.prev:
            fold_scales(group, rng.uniform(0.25, 4.0, group.linear.in_features).astype(np.float32))
            folded.append(group.name)
    assert folded == (["qkv", "o_proj", "gate_up", "down_proj"] if kv_heads == 4 else ["qkv", "gate_up", "down_proj"])
    after = layer_output(config, layer, x)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    assert not np.allclose(load_layer(ckpt, config, 0).gate_up.weight, layer.gate_up.weight)  # it did change


def test_scale_search_protects_salient_channels():
    """Inputs with a few large channels: AWQ's scales cut the output error of plain rounding severalfold."""
    from awqinfer.engine.quant.awq_search import search_scales
    from awqinfer.engine.quant.rounding import fake_quantize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 128)).astype(np.float32)
    x[:, :4] *= 30  # salient input channels, as in real LLM activations
    w = rng.standard_normal((64, 128)).astype(np.float32)
    gram = x.T @ x
    s = search_scales(np.abs(x).mean(0), gram, w, 32)
    rtn = np.sum((x @ (fake_quantize(w, 32) - w).T) ** 2)
    awq = np.sum((x @ (fake_quantize(w * s, 32) / s - w).T) ** 2)
    assert s[:4].min() > 2 * np.median(s)
    assert awq < 0.5 * rtn


def test_clip_search_never_widens_and_reduces_error():
    from awqinfer.engine.quant.awq_search import apply_clip, search_clip
    from awqinfer.engine.quant.rounding import fake_quantize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    w = rng.standard_t(2, (32, 64)).astype(np.float32)  # heavy tails: clipping pays off
    gram = x.T @ x
    bound = search_clip(gram, w, 16)
    full = np.abs(w).reshape(32, 4, 16).max(2)
    assert bound.shape == (32, 4) and (bound <= full).all() and (bound >= 0.5 * full).all() and (bound < full).any()
    clipped = w.copy()
    apply_clip(clipped, bound, 16)
    assert np.abs(clipped).reshape(32, 4, 16).max(2).max() <= bound.max()
    err = lambda v: np.sum((x @ (fake_quantize(v, 16) - w).T) ** 2)
    assert err(clipped) < err(w)


@pytest.mark.parametrize("arch,kv_heads", [("llama", 4), ("qwen2", 2)])
def test_awq_tiny_model_end_to_end_matches_transformers(arch, kv_heads, tmp_path):
    """AWQ on a tiny model: AutoAWQ layout, loads in awqinfer, same logits as transformers on the dequantised twin."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from oracle import dense_twin, hf_logits, hf_model

    src = make_model(tmp_path / "src", arch, kv_heads=kv_heads)
    out = quantize(src, tmp_path / "awq", method="awq", group_size=32, samples=4, seq_len=32, progress=False)
    written = read_all(out)
    assert json.loads((out / "config.json").read_text())["quantization_config"] == AWQ_CONFIG
    for name, t in written.items():
        if name.endswith(".qweight"):
            module = name.removesuffix(".qweight")
            k, n8 = t.shape
            assert t.dtype == np.int32 and written[f"{module}.qzeros"].shape == (k // 32, n8)
            assert written[f"{module}.scales"].dtype == np.float16 and written[f"{module}.scales"].shape == (k // 32, 8 * n8)
            assert autoawq_unpack(t).max() <= 15 and autoawq_unpack(written[f"{module}.qzeros"]).max() <= 15
        elif not name.endswith((".qzeros", ".scales")):
            assert t.dtype == np.float16, name
    ids = [1, 17, 250, 33, 101, 7, 300, 45, 12, 88]
    llm = awqinfer.load(out)
    ours = llm.model.forward(ids, llm.model.new_cache(len(ids)))
    theirs = hf_logits(hf_model(dense_twin(out, tmp_path / "twin")), ids, len(ids))
    assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()
    # the 4-bit model still computes roughly what the float one does
    ref = awqinfer.load(src).model
    fp = ref.forward(ids, ref.new_cache(len(ids)))
    assert np.corrcoef(fp.ravel(), ours.ravel())[0, 1] > 0.9


def test_calibration_text_and_windows(tmp_path, tiny_llama):
    from awqinfer.engine.quant.calibration import default_text, read_text, windows

    text = default_text()
    assert 300_000 <= len(text) <= 500_000
    assert "PSF" in text or "Python Software Foundation" in text  # the license
    assert "def " in text and "return" in text  # code
    assert text == default_text()  # deterministic
    w = windows(list(range(1000)), 4, 100)
    assert w.shape == (4, 100) and w[1, 0] == 250
    with pytest.raises(InputError, match="has 1000 tokens; 20 samples x 100 tokens need 2000"):
        windows(list(range(1000)), 20, 100)
    with pytest.raises(InputError, match="does not exist"):
        read_text(tmp_path / "nope.txt")
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    with pytest.raises(InputError, match="short.txt has"):
        quantize(tiny_llama, tmp_path / "q", method="awq", group_size=32, calib=short, samples=8, seq_len=64)


def run_cli(*argv) -> int:
    """``awqinfer quantize ARGV`` through the subcommand's own parser and handler."""
    from awqinfer.cli import quantize as command
    from awqinfer.cli.common import Parser

    parser = Parser(prog="awqinfer")
    command.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    return command.main(parser.parse_args(["quantize", *map(str, argv)]))


def test_cli_quantize(tiny_llama, tmp_path, capsys):
    out = tmp_path / "q"
    assert run_cli(tiny_llama, out, "--method", "rtn", "--group-size", "32") == 0
    assert "wrote" in capsys.readouterr().err
    assert ModelConfig.load(out).quant.group_size == 32
    assert run_cli(tiny_llama, out, "--method", "rtn") == 2  # OUT not empty
    with pytest.raises(SystemExit) as e:
        run_cli(tiny_llama, tmp_path / "x", "--method", "gptq")
    assert e.value.code == 2
    with pytest.raises(InputError, match="group_size 24 does not divide"):
        run_cli(tiny_llama, tmp_path / "y", "--group-size", "24")


# --- the real model ----------------------------------------------------------


def held_out_windows(tokenizer, n: int, seq_len: int) -> np.ndarray:
    """Token windows of text that is not in the calibration set: package descriptions (README markdown)."""
    import importlib.metadata as md

    from awqinfer.engine.quant.calibration import windows

    text = "\n\n".join(md.distribution(p).read_text("METADATA") for p in ("transformers", "huggingface-hub"))
    return windows(tokenizer.encode(text, add_special_tokens=False), n, seq_len, "held-out text")


def perplexity(directory, windows: np.ndarray) -> float:
    """exp(mean next-token negative log-likelihood) of awqinfer's model over ``windows``."""
    from awqinfer.engine.model import Model

    model = Model.load(directory)
    nll, count = 0.0, 0
    for ids in windows:
        logits = model.forward(ids, model.new_cache(len(ids))).astype(np.float64)[:-1]
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
        count += len(ids) - 1
    return float(np.exp(nll / count))


def test_awq_beats_round_to_nearest_on_smollm2(smollm2_fp32, tmp_path):
    """The paper's central claim on the real model: at 4 bits, group 64, AWQ's perplexity is below RTN's."""
    import time

    from awqinfer.engine.text.tokenizer import Tokenizer

    windows = held_out_windows(Tokenizer(smollm2_fp32), 4, 256)
    fp32 = perplexity(smollm2_fp32, windows)
    rtn = perplexity(quantize(smollm2_fp32, tmp_path / "rtn", method="rtn", group_size=64, progress=False), windows)
    start = time.perf_counter()
    awq_dir = quantize(smollm2_fp32, tmp_path / "awq", method="awq", group_size=64, samples=8, seq_len=128,
                       progress=False)
    seconds = time.perf_counter() - start
    awq = perplexity(awq_dir, windows)
    print(f"\nSmolLM2-135M, group 64, held-out perplexity: fp32 {fp32:.3f}, RTN {rtn:.3f}, "
          f"AWQ {awq:.3f} (8 x 128 calibration tokens, {seconds:.0f} s)")
    assert fp32 < awq < rtn
