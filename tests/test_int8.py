"""Int8 weight-only: the quantizer, the kernels, and a whole model loaded with int8=True."""

import numpy as np
import pytest

from checkpoints import make_model

from awqinfer.engine import hub
from awqinfer.engine.llm import load
from awqinfer.engine.checkpoint.safetensors import Checkpoint
from awqinfer.engine.checkpoint.config import ModelConfig
from awqinfer.engine.model import Model
from awqinfer.engine.model.linear import DenseLinear, Int8Linear
from awqinfer.engine.model.weights import load_weights
from awqinfer.engine.model.linear import quantize_int8
from awqinfer.kernels.int8 import int8_gemm, int8_gemv
from oracle import int8_weight


@pytest.fixture(scope="module")
def tiny_fp16(tmp_path_factory):
    """A Llama checkpoint stored in fp16, as meta-llama/Llama-2-7b-chat-hf is."""
    return make_model(tmp_path_factory.mktemp("llama_fp16"), "llama", dtype=np.float16)


def test_quantize_int8_is_symmetric_per_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 80)).astype(np.float32) * rng.uniform(0.01, 10, (48, 1)).astype(np.float32)
    w[5] = 0.0  # an all-zero row must stay zero, not NaN
    q, s = quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (48,)
    assert np.abs(q).max() == 127 and q.min() >= -127
    np.testing.assert_array_equal(np.abs(q).max(axis=1)[np.arange(48) != 5], 127)  # absmax maps to 127
    assert not q[5].any() and s[5] == 0
    err = np.abs(int8_weight(q, s) - w)
    assert (err <= s[:, None] / 2 * (1 + 1e-5)).all()  # round to nearest: at most half a step


@pytest.mark.parametrize("tokens", [1, 7])
def test_int8_kernels_match_their_dequantisation(tokens):
    rng = np.random.default_rng(tokens)
    q, s = quantize_int8(rng.standard_normal((96, 160)).astype(np.float32))
    x = rng.standard_normal((tokens, 160)).astype(np.float32)
    expect = x.astype(np.float64) @ int8_weight(q, s).T.astype(np.float64)
    out = np.empty((tokens, 96), np.float32)
    if tokens == 1:
        int8_gemv(x[0], q, s, out[0])
    else:
        int8_gemm(x, q, s, out)
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())


def _load(directory, int8):
    config = ModelConfig.load(directory)
    return Model(config, load_weights(Checkpoint(directory), config, int8=int8))


def test_int8_model_matches_its_dequantised_twin_and_the_fp_model(tiny_fp16):
    q_model, fp_model = _load(tiny_fp16, True), _load(tiny_fp16, False)
    twin = _load(tiny_fp16, True)  # the same int8 weights, widened to f32 and run by the dense kernels
    for layer in twin.weights.layers:
        for name in ("qkv", "o_proj", "gate_up", "down_proj"):
            linear = getattr(layer, name)
            assert isinstance(linear, Int8Linear) and linear.qweight.dtype == np.int8
            setattr(layer, name, DenseLinear(int8_weight(linear.qweight, linear.scales), linear.bias))
    ids = list(range(3, 43))
    run = lambda m: m.forward(ids, m.new_cache(64))
    got, dequantised, fp = run(q_model), run(twin), run(fp_model)
    scale = np.abs(fp).max()
    # exact up to fp32 summation order
    np.testing.assert_allclose(got, dequantised, rtol=0, atol=1e-5 * scale)
    # int8 rounding: stated tolerance, 3% of the logit range, and the same greedy token almost everywhere
    assert np.abs(got - fp).max() <= 0.03 * scale
    assert (got.argmax(-1) == fp.argmax(-1)).mean() >= 0.9
    # decode (gemv) agrees with prefill (gemm)
    cache = q_model.new_cache(64)
    q_model.forward(ids[:-1], cache)
    np.testing.assert_allclose(q_model.forward(ids[-1:], cache)[0], got[-1], rtol=0, atol=1e-4 * scale)


def test_llama2_int8_name_loads_its_repo_as_int8(tiny_fp16, monkeypatch):
    asked = []
    monkeypatch.setattr(hub, "hf_snapshot", lambda repo, *offline: asked.append(repo) or tiny_fp16)
    llm = load("@cf/meta/llama-2-7b-chat-int8")
    assert asked == ["meta-llama/Llama-2-7b-chat-hf"]
    assert isinstance(llm.model.weights.layers[0].gate_up, Int8Linear)
    assert llm.model.weights.layers[0].gate_up.qweight.nbytes * 4 == (
        llm.model.config.hidden_size * 2 * llm.model.config.intermediate_size * 4)
    out = llm.run({"prompt": "Hello", "max_tokens": 6, "temperature": 0})  # generation runs on int8 weights
    ids = llm.tokenizer.encode_chat([{"role": "user", "content": "Hello"}])
    greedy = []
    for _ in range(6):  # an independent greedy loop over the int8 model
        greedy.append(int(llm.model.forward(ids + greedy, llm.model.new_cache(len(ids) + 6))[-1].argmax()))
        if greedy[-1] in llm.stop_ids:
            break
    assert out["usage"]["completion_tokens"] == len(greedy)
    assert out["response"] == llm.tokenizer.decode([t for t in greedy if t not in llm.stop_ids])
    # the AWQ names load their (already quantized) checkpoints as they are
    llm = load("@cf/qwen/qwen1.5-7b-chat-awq")
    assert asked[-1] == "Qwen/Qwen1.5-7B-Chat-AWQ"
    assert isinstance(llm.model.weights.layers[0].gate_up, DenseLinear)


def test_int8_on_a_real_model_keeps_its_perplexity(smollm2_fp32):
    """SmolLM2-135M (the GGUF import, fp32) against itself with int8 weight-only projections."""
    from awqinfer.engine.text.tokenizer import Tokenizer

    ids = Tokenizer(smollm2_fp32).encode(
        "The history of science is the study of the development of science and scientific knowledge, "
        "including both the natural and social sciences. Science is a body of empirical knowledge.")
    logits = [m.forward(ids, m.new_cache(len(ids))).astype(np.float64)
              for m in (_load(smollm2_fp32, False), _load(smollm2_fp32, True))]

    def ppl(lg):
        lg = lg - lg.max(-1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
        return np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean())

    fp, q = logits
    assert (fp.argmax(-1) == q.argmax(-1)).mean() >= 0.95
    assert abs(ppl(q) / ppl(fp) - 1) <= 0.02  # measured: 10.13 vs 10.14
