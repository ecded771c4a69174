"""The compiled decode step (fast_decode.decode_tokens) against the readable forward pass.

The fast path differs from the reference in two documented places: AWQ projections take
their input in fixed point per 64 values (kernels/qdot.py), and the default lm_head is an
int8 screen with its top RESCORE logits recomputed exactly. So the comparisons here are exact
(rtol 1e-4) against a reference that rounds the AWQ inputs the same way in plain numpy
(``fixed_point_awq_inputs``), with the f32 head, except where one input sits on a rounding boundary:
the two paths sum in different orders, so now and then one int8 code differs by one step
(``assert_matches``). The int8 head and the plain reference are compared with bounds of their own.
"""

import numpy as np
import pytest

from awqinfer.engine.model.fast_decode import DecodeState
from awqinfer.engine.model import Model
from awqinfer.engine.model.linear import AwqLinear, DenseLinear
from awqinfer.kernels.awq import awq_gemv
from awqinfer.kernels.decode import RESCORE
from awqinfer.kernels.decode_attention import ATTN_CHUNK
from checkpoints import quantize_checkpoint, random_weights, tiny_config, write_checkpoint
from oracle import fixed_point_activations

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


def filled(cache, name: str, positions: slice) -> np.ndarray:
    """A cache's keys or values at ``positions`` as f32 (L, KV, S, D) (float16 caches hold half bits)."""
    a = getattr(cache, name)[:, :, positions]
    return (a.view(np.float16) if a.dtype == np.uint16 else a).astype(np.float32)


@pytest.fixture
def fixed_point_awq_inputs(monkeypatch):
    """The reference path's one-token AWQ GEMVs round their input as the fast path does (numpy)."""
    monkeypatch.setattr(AwqLinear, "gemv", lambda self, x, out: awq_gemv(fixed_point_activations(x), self.qweight,
                                                                          self.scales, self.zeros, out))


@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_fast_decode_equals_reference(fixture, kv_dtype, request, fixed_point_awq_inputs):
    model = Model.load(request.getfixturevalue(fixture), kv_dtype=kv_dtype)
    model.fast_lm_head_int8 = False
    assert model._fast_state(), "the fast path must be available for dense and AWQ checkpoints"
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, model.config.vocab_size, 11)
    steps = rng.integers(0, model.config.vocab_size, 20)
    fast, ref, fast_cache, ref_cache = _fast_and_reference(model, prompt, steps)
    assert fast.shape == ref.shape == (len(steps), model.config.vocab_size)
    assert_matches(fast, ref)
    assert fast_cache.pos == ref_cache.pos == len(prompt) + len(steps)
    new = slice(len(prompt), len(prompt) + len(steps))  # (L, KV, S, D): the decoded positions, step-major
    rtol = 1e-4 if kv_dtype == "float32" else 2.0**-9  # float16 keys: the two paths' f32 may round a half step apart
    for name in ("k", "v"):
        assert_matches(filled(fast_cache, name, new).transpose(2, 0, 1, 3),
                       filled(ref_cache, name, new).transpose(2, 0, 1, 3), rtol)


@pytest.mark.parametrize("fixture", ["tiny_llama_awq", "tiny_qwen2_awq"])
def test_fast_decode_stays_near_the_plain_reference(fixture, request):
    """Against the reference with f32 activations (no rounding emulated): ~3e-5 relative on tiny random models."""
    model = Model.load(request.getfixturevalue(fixture))
    model.fast_lm_head_int8 = False
    rng = np.random.default_rng(5)
    prompt, steps = rng.integers(0, model.config.vocab_size, 11), rng.integers(0, model.config.vocab_size, 20)
    fast, ref, _, _ = _fast_and_reference(model, prompt, steps)
    rel = np.sqrt(np.mean((fast - ref) ** 2) / np.mean(ref ** 2))
    assert 1e-6 < rel < 3e-4  # really rounded, and not by more than the documented trade
    np.testing.assert_array_equal(fast.argmax(axis=1), ref.argmax(axis=1))


def assert_matches(fast, ref, rtol=1e-4):
    """fast == ref (within rtol) on most steps; on the others one rounding flip apart (within 2%)."""
    tol = rtol * np.abs(ref).max()
    exact_steps = np.isclose(fast, ref, rtol=rtol, atol=tol).reshape(len(fast), -1).all(axis=1)
    assert exact_steps.mean() >= 0.75, exact_steps
    np.testing.assert_allclose(fast, ref, rtol=0, atol=0.02 * np.abs(ref).max())


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
def test_fast_decode_equals_reference_on_variants(variant, tmp_path, fixed_point_awq_inputs):
    """Mixed formats (modules_to_not_convert), Llama's q/k/v/o biases, and a cache past ATTN_CHUNK positions."""
    directory = {"mixed_awq_dense": lambda: _variant(tmp_path, awq_skip=("mlp",)),
                 "attention_bias": lambda: _variant(tmp_path, attention_bias=True),
                 "past_one_attention_chunk": lambda: _variant(tmp_path, long=True)}[variant]()
    model = Model.load(directory)
    model.fast_lm_head_int8 = False
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
    fast = np.concatenate([model.forward([token], fast_cache, fast=True) for token in steps])
    ref = np.concatenate([model.forward([token], ref_cache, fast=False) for token in steps])
    assert_matches(fast, ref)
    if variant == "past_one_attention_chunk":
        assert fast_cache.pos > ATTN_CHUNK  # the attention ran in two position chunks, merged


def test_fast_decode_with_int8_lm_head(tiny_qwen2_awq):
    """The default int8 lm_head: the top RESCORE logits and the argmax are the f32 head's, the rest ~1% off."""
    model = Model.load(tiny_qwen2_awq)
    assert model._fast_state() and model._decode_state.lm_head_int8  # the default
    head = model._decode_state.head
    assert head.q8.dtype == np.int8 and head.q8.shape == (model.config.vocab_size, model.config.hidden_size)
    rng = np.random.default_rng(2)
    prompt, steps = rng.integers(0, model.config.vocab_size, 7), rng.integers(0, model.config.vocab_size, 9)
    screened, _, _, _ = _fast_and_reference(model, prompt, steps)
    model.fast_lm_head_int8 = False
    assert model._fast_state() and not model._decode_state.lm_head_int8  # rebuilt when the flag changes
    exact, _, _, _ = _fast_and_reference(model, prompt, steps)  # the same hidden states, through the f32 head
    tol = 1e-5 * np.abs(exact).max()
    same = np.abs(screened - exact) <= tol
    assert (same.sum(axis=1) >= RESCORE).all()  # the rescored top is exact
    top = np.argsort(exact, axis=1)[:, -5:]  # the true top 5 are among the screen's top RESCORE here
    assert np.take_along_axis(same, top, 1).all()
    np.testing.assert_array_equal(screened.argmax(axis=1), exact.argmax(axis=1))
    assert (~same).any()  # the int8 screen was really used for the rest
    rel = np.sqrt(np.mean((screened - exact) ** 2) / np.mean(exact ** 2))
    assert rel < 0.03


def test_int8_lm_head_rescores_from_the_16_bit_embedding(tmp_path):
    """A tied f16 lm_head: both paths read the embedding table as stored, no f32 copy of it anywhere."""
    d = {**tiny_config("llama", tie=True), "torch_dtype": "float16"}
    tensors = {k: v.astype(np.float16) for k, v in random_weights(d, seed=6).items()}
    model = Model.load(write_checkpoint(tmp_path, d, tensors))
    assert model._fast_state()
    head = model._decode_state.head
    assert head.rows.dtype == np.uint16 and not head.bf16
    assert np.shares_memory(head.rows, model.weights.embed.table)
    assert type(model.weights.lm_head).__name__ == "HalfLinear"  # the readable forward's head: the same rows
    cache_f, cache_r = model.new_cache(8), model.new_cache(8)
    model.forward([3, 4], cache_f)
    model.forward([3, 4], cache_r)
    fast, ref = model.forward([5], cache_f), model.forward([5], cache_r, fast=False)
    top = np.argsort(ref[0])[-RESCORE:]
    np.testing.assert_allclose(fast[0, top], ref[0, top], rtol=1e-5, atol=1e-5 * np.abs(ref).max())


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
