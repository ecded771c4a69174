"""LoRA adapters per request against transformers + peft, in batches, and their errors.

The oracle: peft itself writes each adapter (``save_pretrained``, ``init_lora_weights=False``
so B is non-zero) onto transformers' model of the same weights (the dense twin of an AWQ
checkpoint), and computes the logits with it. Bound as test_parity: max |ours - theirs|
<= 1e-3 * max |theirs| with the exact f32 lm_head, on the compiled and the readable path.
"""

import json
import re
import threading

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import awqinfer
from awqinfer import CheckpointError, InputError
from awqinfer.engine.model.forward import Model
from awqinfer.engine.text.generate import generate_tokens
from awqinfer.engine.text.sampling import SamplingParams
from checkpoints import make_model

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from oracle import dense_twin, hf_logits, hf_model  # noqa: E402

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
PROMPT = [1, 17, 250, 33, 101, 7, 300, 45, 12]
STEPS = [3, 17, 200, 64]


def make_adapter(base, directory, seed=0, **lora):
    """peft's LoRA on transformers' model of ``base`` (dense), with random non-zero A and B, saved to ``directory``.

    Returns the peft model (eval mode), the oracle for this adapter.
    """
    torch.manual_seed(seed)
    config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ATTENTION + MLP,
                                "init_lora_weights": False, **lora})
    model = peft.get_peft_model(hf_model(base), config).eval()
    model.save_pretrained(directory)
    return model


def our_logits(model, ids, prefill, adapter, fast):
    cache = model.new_cache(len(ids))
    rows = [model.forward(ids[:prefill], cache, adapter=adapter)]
    rows += [model.forward([i], cache, fast=fast, adapter=adapter) for i in ids[prefill:]]
    return np.concatenate(rows)


@pytest.fixture(scope="module")
def twins(tmp_path_factory, request):
    """fixture name -> its dense twin directory (transformers reads it), made once."""
    made = {}

    def twin(fixture):
        if fixture not in made:
            made[fixture] = dense_twin(request.getfixturevalue(fixture), tmp_path_factory.mktemp(fixture + "_twin"))
        return made[fixture]
    return twin


@pytest.mark.parametrize("fixture,lora", [
    ("tiny_llama", {"r": 4, "lora_alpha": 8}),
    ("tiny_qwen2", {"r": 8, "lora_alpha": 16, "target_modules": ATTENTION, "use_rslora": True}),
    ("tiny_llama_awq", {"r": 2, "lora_alpha": 5, "target_modules": MLP, "lora_dropout": 0.3}),
    ("tiny_qwen2_awq", {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj", "down_proj"],
                        "use_rslora": True}),
    ("tiny_qwen2_awq", {"r": 4, "lora_alpha": 4, "target_modules": "all-linear"}),  # saved as full module names
])
def test_logits_match_peft(fixture, lora, twins, request, tmp_path):
    """Prefill and decode with an adapter equal peft's logits, compiled and readable; greedy text equal."""
    base = request.getfixturevalue(fixture)
    oracle = make_adapter(twins(fixture), tmp_path / "adapters" / "mine", **lora)
    ids = PROMPT + STEPS
    theirs = hf_logits(oracle, ids, len(PROMPT))
    with oracle.disable_adapter():
        plain = hf_logits(oracle, ids, len(PROMPT))
    assert np.abs(plain - theirs).max() > 0.05 * np.abs(theirs).max()  # the adapter matters here
    llm = awqinfer.load(base, lora_dir=tmp_path / "adapters")
    assert llm.adapters == ["mine"]
    llm.model.fast_lm_head_int8 = False
    bound = 1e-3 * np.abs(theirs).max()
    for fast in (True, False):
        ours = our_logits(llm.model, ids, len(PROMPT), "mine", fast)
        assert np.abs(ours - theirs).max() <= bound, f"fast={fast}: {np.abs(ours - theirs).max()} > {bound}"
    # greedy generation (the default, int8-screened head) equals peft's greedy continuation
    want = list(PROMPT)
    with torch.no_grad():
        for _ in range(8):
            want.append(int(oracle(torch.tensor([want])).logits[0, -1].argmax()))
    llm.model.fast_lm_head_int8 = True
    got = [t for t, _ in generate_tokens(llm.model, PROMPT, SamplingParams(max_tokens=8, temperature=0), frozenset(),
                                         adapter="mine")]
    assert got == want[len(PROMPT):]


@pytest.fixture(scope="module")
def two_adapters(tiny_qwen2_awq, twins, tmp_path_factory):
    """Two different adapters (all seven modules; attention only, rank 8) for tiny_qwen2_awq, in one lora_dir."""
    root = tmp_path_factory.mktemp("two_adapters")
    make_adapter(twins("tiny_qwen2_awq"), root / "alpha", seed=1)
    make_adapter(twins("tiny_qwen2_awq"), root / "beta", seed=2, r=8, lora_alpha=8, target_modules=ATTENTION)
    return root


def test_without_lora_the_output_is_the_base_models(tiny_qwen2_awq, two_adapters):
    """No adapter chosen: bitwise the model without adapters; each adapter changes the logits."""
    plain = awqinfer.load(tiny_qwen2_awq).model
    llm = awqinfer.load(tiny_qwen2_awq, lora_dir=two_adapters)
    assert llm.adapters == ["alpha", "beta"]
    ids = PROMPT + STEPS
    for fast in (True, False):
        base = our_logits(plain, ids, len(PROMPT), None, fast)
        np.testing.assert_array_equal(our_logits(llm.model, ids, len(PROMPT), None, fast), base)
        alpha = our_logits(llm.model, ids, len(PROMPT), "alpha", fast)
        beta = our_logits(llm.model, ids, len(PROMPT), "beta", fast)
        assert np.abs(alpha - base).max() > 0.01 and np.abs(beta - base).max() > 0.01
        assert np.abs(alpha - beta).max() > 0.01


@pytest.mark.parametrize("int8", [False, True])
def test_mixed_batch_rows_equal_each_sequence_alone(tiny_qwen2_awq, tiny_qwen2, two_adapters, int8):
    """One step over rows with adapter alpha, beta, none and alpha again: each row its solo logits.

    AWQ bases go through the compiled step (bitwise per row), int8 through the readable one (whose
    base projections of B rows are a matrix product, of one row a vector one: equal to float rounding).
    """
    model = awqinfer.load(tiny_qwen2 if int8 else tiny_qwen2_awq, lora_dir=two_adapters).model
    if int8:
        model = Model.load(tiny_qwen2, int8=True)
        model.add_adapters({"alpha": two_adapters / "alpha", "beta": two_adapters / "beta"})
    names = ["alpha", "beta", None, "alpha"]
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, model.config.vocab_size, n) for n in (5, 11, 3, 8)]
    batch, alone = [], []
    for name, prompt in zip(names, prompts):
        for caches in (batch, alone):
            caches.append(model.new_cache(20))
            model.forward(prompt, caches[-1], adapter=name)
    for _ in range(3):
        tokens = rng.integers(0, model.config.vocab_size, len(names))
        batched = model.forward_batch(tokens, batch, adapters=names)
        for b, name in enumerate(names):
            solo = model.forward([tokens[b]], alone[b], adapter=name)[0]
            if int8:
                np.testing.assert_allclose(batched[b], solo, rtol=1e-4, atol=1e-4 * np.abs(solo).max())
            else:
                np.testing.assert_array_equal(batched[b], solo)


def test_compiled_and_readable_batches_agree(tiny_llama_awq, tiny_llama, tmp_path, twins):
    """The kernel (kernels/lora.py) and the numpy twin (adapters.add_lora) on a mixed batch, ranks 2 and 6."""
    make_adapter(twins("tiny_llama_awq"), tmp_path / "a" / "r2", r=2, target_modules=MLP + ["v_proj"])
    make_adapter(twins("tiny_llama_awq"), tmp_path / "a" / "r6", r=6, seed=5)
    model = awqinfer.load(tiny_llama_awq, kv_dtype="float32", lora_dir=tmp_path / "a").model
    model.fast_lm_head_int8 = False
    names = ["r6", None, "r2"]
    fast = [model.new_cache(8) for _ in names]
    slow = [model.new_cache(8) for _ in names]
    for caches in (fast, slow):
        model.forward_batch([5, 9, 14], caches, adapters=names)
    tokens = [7, 300, 21]
    ref = model.forward_batch(tokens, slow, fast=False, adapters=names)
    got = model.forward_batch(tokens, fast, fast=True, adapters=names)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_concurrent_runs_with_different_adapters_match_their_solo_text(tiny_qwen2_awq, two_adapters):
    """Requests with alpha, beta and none, run at once through the scheduler, each give their solo text."""
    llm = awqinfer.load(tiny_qwen2_awq, lora_dir=two_adapters)
    requests = [{"prompt": p, "temperature": 0, "max_tokens": 12, **({"lora": name} if name else {})}
                for p, name in [("Hello", "alpha"), ("Hello", "beta"), ("Hello", None), ("Pizza is", "alpha"),
                                ("Pizza is", "beta"), ("def add", None)]]
    solo = [llm.run(r) for r in requests]
    assert len({s["response"] for s in solo[:3]}) == 3  # each adapter changes the text
    results = [None] * len(requests)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, llm.run(requests[i])))
               for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == solo


def test_unknown_adapter_names(tiny_qwen2, two_adapters):
    llm = awqinfer.load(tiny_qwen2)
    with pytest.raises(InputError, match="no adapter named 'alpha'; this model has no adapters loaded"):
        llm.run({"prompt": "hi", "lora": "alpha"})
    llm.add_adapter("alpha", two_adapters / "alpha")
    with pytest.raises(InputError, match="no adapter named 'gamma'; loaded: alpha"):
        llm.run({"messages": [{"role": "user", "content": "hi"}], "lora": "gamma"})
    with pytest.raises(InputError, match="lora: got"):
        llm.run({"prompt": "hi", "lora": 3})
    with pytest.raises(InputError, match="already loaded"):
        llm.add_adapter("alpha", two_adapters / "beta")


def _adapter_copy(src, dst, config=None, tensors=None):
    """A copy of adapter ``src`` in ``dst`` with adapter_config.json keys and tensors replaced."""
    dst.mkdir(parents=True)
    cfg = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **(config or {})}))
    weights = load_file(str(src / "adapter_model.safetensors"))
    weights = tensors(weights) if tensors else weights
    save_file(weights, str(dst / "adapter_model.safetensors"))
    return dst


Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.mark.parametrize("config,tensors,message", [
    ({"r": 3}, None, r"q_proj.lora_A.weight' has shape \(4, 64\), expected \(3, 64\)"),
    (None, lambda w: {**w, Q_A: w[Q_A][:, :32].copy()}, r"has shape \(4, 32\), expected \(4, 64\)"),
    (None, lambda w: {**w, Q_A: w[Q_A].astype(np.int32)}, "has dtype I32"),
    (None, lambda w: {**w, Q_A: np.full_like(w[Q_A], np.nan)}, "NaN or infinite"),
    (None, lambda w: {k.replace("layers.1.", "layers.7."): v for k, v in w.items()},
     r"adapts 'model.layers.7.\w+.\w+', which this model does not have"),
    (None, lambda w: {k: v for k, v in w.items() if k != Q_A}, "q_proj has no lora_A tensor"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, None, "target module 'embed_tokens' is not one"),
    ({"target_modules": ["q_proj"]}, None, r"holds tensors for '\w+', which target_modules"),
    ({"use_dora": True}, None, r"DoRA \(use_dora\)"),
    ({"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
    ({"rank_pattern": {"q_proj": 2}}, None, "rank_pattern"),
    ({"peft_type": "IA3"}, None, "only LoRA adapters"),
    ({"bias": "all"}, None, "bias is 'all'"),
    (None, lambda w: {**w, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": w[Q_A][0]},
     "belongs to DoRA"),
])
def test_bad_adapters_are_refused_by_name(tiny_qwen2, two_adapters, tmp_path, config, tensors, message):
    """Each flaw is a CheckpointError naming the file (and tensor); nothing of the failed load stays."""
    bad = _adapter_copy(two_adapters / "alpha", tmp_path / "bad", config, tensors)
    llm = awqinfer.load(tiny_qwen2)
    stacks = llm.model.adapters.stacks
    with pytest.raises(CheckpointError, match=message) as err:
        llm.model.add_adapters({"good": two_adapters / "beta", "bad": bad})
    assert str(bad) in str(err.value)
    assert llm.adapters == [] and llm.model.adapters.stacks is stacks


def test_training_only_settings_change_nothing(tiny_qwen2_awq, two_adapters, tmp_path):
    """lora_dropout (training only) and fan_in_fan_out (peft turns it off on nn.Linear) load and give the same logits."""
    _adapter_copy(two_adapters / "alpha", tmp_path / "a" / "same", {"fan_in_fan_out": True, "lora_dropout": 0.5})
    llm = awqinfer.load(tiny_qwen2_awq, lora_dir=two_adapters)
    llm.add_adapter("same", tmp_path / "a" / "same")
    ids = PROMPT + STEPS
    np.testing.assert_array_equal(our_logits(llm.model, ids, len(PROMPT), "same", True),
                                  our_logits(llm.model, ids, len(PROMPT), "alpha", True))


def test_half_precision_adapters(tiny_qwen2_awq, two_adapters, tmp_path):
    """fp16 tensors (as many trainers save them) load, widened exactly: the same logits as the f32 file rounded to f16."""
    rounded = lambda w: {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}
    _adapter_copy(two_adapters / "alpha", tmp_path / "a" / "f16", tensors=lambda w: {
        k: v.astype(np.float16) for k, v in w.items()})
    _adapter_copy(two_adapters / "alpha", tmp_path / "a" / "f32", tensors=rounded)
    llm = awqinfer.load(tiny_qwen2_awq, lora_dir=tmp_path / "a")
    ids = PROMPT + STEPS
    np.testing.assert_array_equal(our_logits(llm.model, ids, len(PROMPT), "f16", True),
                                  our_logits(llm.model, ids, len(PROMPT), "f32", True))


def test_missing_and_corrupt_files(tiny_qwen2, two_adapters, tmp_path):
    llm = awqinfer.load(tiny_qwen2)
    with pytest.raises(CheckpointError, match="no such adapter directory"):
        llm.add_adapter("x", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="adapter_config.json: missing"):
        llm.add_adapter("x", empty)
    no_weights = _adapter_copy(two_adapters / "alpha", tmp_path / "nw")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors: missing"):
        llm.add_adapter("x", no_weights)
    corrupt = _adapter_copy(two_adapters / "alpha", tmp_path / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=re.escape(str(corrupt / "adapter_model.safetensors"))):
        llm.add_adapter("x", corrupt)
    (corrupt / "adapter_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="adapter_config.json: not valid JSON"):
        llm.add_adapter("x", corrupt)
    assert llm.adapters == []


def test_an_adapter_for_another_model_size(tiny_qwen2, tmp_path):
    """An adapter written for a wider model: refused at load, naming the tensor and the shape expected."""
    wide = make_model(tmp_path / "wide", "qwen2", hidden=128, intermediate=256)
    make_adapter(wide, tmp_path / "a" / "wide")
    with pytest.raises(CheckpointError, match=r"has shape \(4, 128\), expected \(4, 64\)"):
        awqinfer.load(tiny_qwen2, lora_dir=tmp_path / "a")


def test_lora_dir_errors(tiny_qwen2, two_adapters, tmp_path):
    with pytest.raises(InputError, match="is not a directory"):
        awqinfer.load(tiny_qwen2, lora_dir=tmp_path / "nowhere")
    with pytest.raises(InputError, match="holds no adapter folders"):
        awqinfer.load(tiny_qwen2, lora_dir=tmp_path)
    with pytest.raises(InputError, match="is itself an adapter"):
        awqinfer.load(tiny_qwen2, lora_dir=two_adapters / "alpha")


def test_cli_run_with_an_adapter(tiny_qwen2_awq, two_adapters):
    """``awqinfer run --lora-dir DIR --lora NAME`` prints the adapter's reply; a bad name or use exits 2, one line."""
    from test_cli import cli, one_line_error

    greedy = ["--max-tokens", "8", "--temperature", "0", "--json"]
    out = cli("run", "--model", tiny_qwen2_awq, "--lora-dir", two_adapters, "--lora", "beta", *greedy, "Hello")
    assert out.returncode == 0, out.stderr
    llm = awqinfer.load(tiny_qwen2_awq, lora_dir=two_adapters)
    assert json.loads(out.stdout) == llm.run({"prompt": "Hello", "lora": "beta", "max_tokens": 8, "temperature": 0})
    unknown = cli("run", "--model", tiny_qwen2_awq, "--lora-dir", two_adapters, "--lora", "gamma", "Hello")
    assert unknown.returncode == 2
    one_line_error(unknown, "no adapter named 'gamma'", "loaded: alpha, beta")
    alone = cli("run", "--model", tiny_qwen2_awq, "--lora", "beta", "Hello")
    assert alone.returncode == 2
    one_line_error(alone, "--lora-dir")


def test_kernel_equals_the_numpy_twin_row_by_row():
    """kernels/lora.py's lora_add against adapters.add_lora: 3 adapters of ranks 5, 0 (not this projection), 2."""
    from awqinfer.engine.model.adapters import add_lora
    from awqinfer.kernels.lora import LoraStack, lora_add

    rng = np.random.default_rng(0)
    R, K, parts = 5, 48, np.array([[0, 32], [32, 40], [40, 48]], np.int64)
    rank = np.array([5, 0, 2], np.int64)
    a = rng.standard_normal((3, 2, 3 * R, K)).astype(np.float32)
    b = rng.standard_normal((3, 2, R, 48)).astype(np.float32)
    for i, r in enumerate(rank):  # padding beyond an adapter's rank is zero, as Adapters lays it out
        a[i, :, np.arange(3 * R) % R >= r] = 0
        b[i, :, r:] = 0
    stack = LoraStack(a, b, parts, rank, np.zeros(3 * R, np.float32))
    x = rng.standard_normal((5, K)).astype(np.float32)
    rows = np.array([2, -1, 0, 1, 0], np.int64)
    base = rng.standard_normal((5, 48)).astype(np.float32)
    got, want = base.copy(), base.copy()
    lora_add(x, stack, 1, rows, got)
    add_lora(stack, 1, [(int(i), slice(r, r + 1)) for r, i in enumerate(rows) if i >= 0], x, want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[[1, 3]], base[[1, 3]])  # no adapter, or one that skips this projection
    assert np.abs(got[0] - base[0]).max() > 0.1
