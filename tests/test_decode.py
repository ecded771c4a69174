"""The compiled decode step (fast_decode.decode_tokens) against the readable forward pass."""

import numpy as np
import pytest

from awqinfer.engine.model.fast_decode import DecodeState
from awqinfer.engine.model import Model
from awqinfer.engine.model.linear import DenseLinear
from awqinfer.kernels.decode import RESCORE
from awqinfer.kernels.decode_attention import ATTN_CHUNK
from checkpoints import quantize_checkpoint, random_weights, tiny_config, write_checkpoint
from oracle import int8_weight

FIXTURES = ["tiny_llama", "tiny_qwen2", "tiny_llama_awq", "tiny_qwen2_awq"]


def _fast_and_reference(model, prompt, steps):
    """Prefill both caches, then feed the same tokens one at a time through each path."""
    fast_cache, ref_cache = model.new_cache(64), model.new_cache(64)
    model.forward(prompt, fast_cache)
    model.forward(prompt, ref_cache)
    fast, ref = [], []
    for token in steps:
        fast.append(model.forward([token], fast_cache, fast=True))
        ref.append(model.forward([token], ref_cache, fast=False))
    return np.concatenate(fast), np.concatenate(ref), fast_cache, ref_cache


def filled(cache, name: str) -> np.ndarray:
    """A cache's keys or values at its filled positions, as f32 (float16 caches hold half bits)."""
    a = getattr(cache, name)[:, :, : cache.pos]
    return (a.view(np.float16) if a.dtype == np.uint16 else a).astype(np.float32)


@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_fast_decode_equals_reference(fixture, kv_dtype, request):
    model = Model.load(request.getfixturevalue(fixture), kv_dtype=kv_dtype)
    assert model._fast_state(), "the fast path must be available for dense and AWQ checkpoints"
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, model.config.vocab_size, 11)
    steps = rng.integers(0, model.config.vocab_size, 20)
    fast, ref, fast_cache, ref_cache = _fast_and_reference(model, prompt, steps)
    assert fast.shape == ref.shape == (len(steps), model.config.vocab_size)
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert fast_cache.pos == ref_cache.pos == len(prompt) + len(steps)
    kv_tol = 1e-4 if kv_dtype == "float32" else 2.0**-10  # one float16 step when the f32 values straddle a rounding
    for name in ("k", "v"):
        np.testing.assert_allclose(filled(fast_cache, name), filled(ref_cache, name), rtol=kv_tol, atol=1e-5)


def _variant(directory, *, awq_skip=None, long=False, **config):
    """A tiny Llama beyond the fixtures: mixed AWQ + dense layers, attention_bias, or a long context."""
    d = {**tiny_config("llama", max_positions=1024 if long else 256), **config}
    tensors = random_weights(d, seed=3)
    if awq_skip is not None:
        tensors = quantize_checkpoint(tensors, 32, skip=awq_skip)
        d["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                    "version": "gemm", "modules_to_not_convert": list(awq_skip)}
    return write_checkpoint(directory, d, tensors)


@pytest.mark.parametrize("variant", ["mixed_awq_dense", "attention_bias", "past_one_attention_chunk"])
def test_fast_decode_equals_reference_on_variants(variant, tmp_path):
    """Mixed formats (modules_to_not_convert), Llama's q/k/v/o biases, and a cache past ATTN_CHUNK positions."""
    directory = {"mixed_awq_dense": lambda: _variant(tmp_path, awq_skip=("mlp",)),
                 "attention_bias": lambda: _variant(tmp_path, attention_bias=True),
                 "past_one_attention_chunk": lambda: _variant(tmp_path, long=True)}[variant]()
    model = Model.load(directory)
    assert model._fast_state()
    kinds = {name: type(stack).__name__ for name, stack in model.weights.stacks.items()}
    if variant == "mixed_awq_dense":
        assert kinds == {"qkv": "AwqLinear", "o_proj": "AwqLinear", "gate_up": "DenseLinear", "down_proj": "DenseLinear"}
    if variant == "attention_bias":
        assert model.weights.stacks["qkv"].bias is not None and model.weights.stacks["o_proj"].bias is not None
    rng = np.random.default_rng(4)
    n_prompt, n_steps = (ATTN_CHUNK + 40, 30) if variant == "past_one_attention_chunk" else (11, 20)
    prompt, steps = rng.integers(0, model.config.vocab_size, n_prompt), rng.integers(0, model.config.vocab_size, n_steps)
    capacity = n_prompt + n_steps
    fast_cache, ref_cache = model.new_cache(capacity), model.new_cache(capacity)
    model.forward(prompt, fast_cache)
    model.forward(prompt, ref_cache)
    for token in steps:
        fast = model.forward([token], fast_cache, fast=True)
        ref = model.forward([token], ref_cache, fast=False)
        np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    if variant == "past_one_attention_chunk":
        assert fast_cache.pos > ATTN_CHUNK  # the attention ran in two position chunks, merged


def test_fast_decode_with_int8_lm_head(tiny_qwen2_awq):
    """int8 lm_head: each logit is the f32 head's (the rescored top) or the int8 copy's, the argmax the f32 one."""
    model = Model.load(tiny_qwen2_awq)
    assert model._fast_state() and not model._decode_state.lm_head_int8  # the default: the f32 head
    model.fast_lm_head_int8 = True
    assert model._fast_state() and model._decode_state.lm_head_int8  # rebuilt when the flag changes
    q8, s8 = model._decode_state.head.q8, model._decode_state.head.scales
    assert q8.dtype == np.int8 and q8.shape == model.weights.lm_head.weight.shape
    original = model.weights.lm_head
    rng = np.random.default_rng(2)
    prompt, steps = rng.integers(0, model.config.vocab_size, 7), rng.integers(0, model.config.vocab_size, 9)
    fast, ref_f32, _, _ = _fast_and_reference(model, prompt, steps)
    model.weights.lm_head = DenseLinear(int8_weight(q8, s8))
    _, ref_int8, _, _ = _fast_and_reference(model, prompt, steps)
    model.weights.lm_head = original
    tol = 1e-4 * np.abs(ref_f32).max()
    exact = np.abs(fast - ref_f32) <= tol
    as_int8 = np.abs(fast - ref_int8) <= tol
    assert (exact | as_int8).all()
    assert (exact.sum(axis=1) >= RESCORE).all()  # the rescored top is exact
    assert (~exact).any()  # and the rest is not: the int8 copy was really used
    np.testing.assert_array_equal(fast.argmax(axis=1), ref_f32.argmax(axis=1))
    top = np.argsort(ref_f32, axis=1)[:, -5:]
    np.testing.assert_allclose(np.take_along_axis(fast, top, 1), np.take_along_axis(ref_f32, top, 1), atol=tol)


def test_readable_path_stays_selectable(tiny_llama):
    model = Model.load(tiny_llama)
    model.fast = False
    cache = model.new_cache(8)
    model.forward([3], cache)
    assert model._decode_state is None  # never built: every token went through the reference
    model.fast = True
    model.forward([4], cache)
    assert isinstance(model._decode_state, DecodeState)


def test_formats_decode_step_lacks_fall_back_to_reference(tiny_llama):
    """int8 projections make the fast path unavailable, not wrong: tokens go through the reference."""
    model = Model.load(tiny_llama, int8=True)
    cache_a, cache_b = model.new_cache(8), model.new_cache(8)
    a = model.forward([5], cache_a)
    b = model.forward([5], cache_b, fast=False)
    assert model._decode_state is False
    np.testing.assert_array_equal(a, b)


def test_layers_are_views_of_the_stacks(tiny_qwen2_awq):
    """The readable path's per-layer weights and the compiled path's stacks are the same memory."""
    w = Model.load(tiny_qwen2_awq).weights
    for l, layer in enumerate(w.layers):
        assert np.shares_memory(layer.qkv.qweight, w.stacks["qkv"].qweight[l])
        assert np.shares_memory(layer.qkv.bias, w.stacks["qkv"].bias[l])
        assert np.shares_memory(layer.post_norm, w.norms[l, 1])


def test_threads_sharing_a_model_get_their_own_results(tiny_llama_awq):
    """Two threads decoding on one model (separate caches) each get what they would get alone."""
    import threading

    import awqinfer

    model = awqinfer.load(tiny_llama_awq).model

    def greedy(prompt, n=24):
        cache = model.new_cache(64)
        logits = model.forward(prompt, cache, last_only=True)
        out = []
        for _ in range(n):
            out.append(int(np.argmax(logits[-1])))
            logits = model.forward([out[-1]], cache)
        return out

    prompts = [[1, 5, 9, 13], [1, 200, 7]]
    alone = [greedy(p) for p in prompts]
    together = [None, None]
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, greedy(prompts[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
