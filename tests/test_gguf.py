"""GGUF import: a tiny GGUF written here (llama.cpp's layout) round-trips, and the real
SmolLM2 file converts to what transformers' own GGUF loader sees: logits, token ids, chat prompt."""

import json

import numpy as np
import pytest

from checkpoints import CHATML_TEMPLATE, LLAMA2_TEMPLATE, make_model

from awqinfer.engine.checkpoint.safetensors import Checkpoint
from awqinfer.engine.checkpoint.gguf import convert_gguf, unpermute
from awqinfer.engine.model import Model
from awqinfer.engine.text.tokenizer import Tokenizer
from awqinfer.errors import CheckpointError

TEXTS = [
    "Hello world",
    "  two leading spaces,\ttabs\tand trailing spaces   ",
    "line one\nline two\n\n\nafter blank lines\r\nwindows",
    "def square(x):\n    return x ** 2  # comment\n\nprint([square(i) for i in range(10)])",
    "emoji: 🎉🚀👩‍👩‍👧 and flags 🇫🇷",
    "中文测试，日本語のテキスト、한국어 텍스트",
    "numbers 1234567 and 3.14159, punctuation?!... «quotes»",
    "<|im_start|>user\nspecial tokens stay whole<|im_end|>",
]


# --- a tiny GGUF written the way llama.cpp's convert_hf_to_gguf.py writes one ------------------


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute, as written there."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, hf_dir, qtype_name="F32"):
    """HF checkpoint ``hf_dir`` (byte-level tokenizer) -> a llama GGUF file, q/k permuted, 2-D weights as ``qtype``."""
    import gguf

    config = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    ckpt = Checkpoint(hf_dir)
    qtype = gguf.GGMLQuantizationType[qtype_name]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), config["vocab_size"])]  # as llama.cpp pads
    specials = {a["content"] for a in tok["added_tokens"]}
    if tok["model"].get("byte_fallback"):  # SentencePiece style, as llama.cpp's _set_vocab_sentencepiece
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([-float(i) for i in range(len(tokens))])  # no merges: the order is in the scores
        w.add_token_types([2 if t == "<unk>" else 3 if t in specials else 6 if t.startswith("<0x") else 1
                           for t in tokens])
        w.add_unk_token_id(0)
        w.add_chat_template(LLAMA2_TEMPLATE)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in specials else 1 for t in tokens])
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
        w.add_add_bos_token(False)
        w.add_chat_template(CHATML_TEMPLATE)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    for name in ckpt.tensors:
        t = ckpt.to_float32(name)
        if name.startswith("model.layers."):
            _, _, l, rest = name.split(".", 3)
            gname = f"blk.{l}.{layer[rest]}"
        else:
            gname = names[name]
        if gname.endswith("attn_q.weight"):
            t = llamacpp_permute(t, config["num_attention_heads"])
        elif gname.endswith("attn_k.weight"):
            t = llamacpp_permute(t, config["num_key_value_heads"])
        if t.ndim == 2 and qtype_name != "F32":
            w.add_tensor(gname, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_bytelevel_llama(tmp_path_factory):
    """A Llama model (untied lm_head, GQA) with a byte-level tokenizer, as SmolLM2 has."""
    d = make_model(tmp_path_factory.mktemp("bl_llama"), "qwen2")  # byte-level tokenizer + ChatML
    config = json.loads((d / "config.json").read_text())
    from checkpoints import random_weights, tiny_config, write_checkpoint

    llama = tiny_config("llama", vocab_size=config["vocab_size"])
    out = tmp_path_factory.mktemp("bl_llama_hf")
    write_checkpoint(out, llama, random_weights(llama, seed=3))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((d / name).read_bytes())
    return out


def test_unpermute_inverts_llamacpp_permute():
    rng = np.random.default_rng(0)
    for heads, rows in ((4, 64), (2, 32), (9, 576)):
        w = rng.standard_normal((rows, 5)).astype(np.float32)
        permuted = llamacpp_permute(w, heads)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(unpermute(permuted, heads), w)
    with pytest.raises(CheckpointError, match="unpermute"):
        unpermute(np.zeros((10, 3), np.float32), 4)


def test_tiny_gguf_round_trip_f32(tiny_bytelevel_llama, tmp_path):
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_bytelevel_llama, "F32")
    out = convert_gguf(gguf_path, tmp_path / "hf")
    original, converted = Checkpoint(tiny_bytelevel_llama), Checkpoint(out)
    assert set(converted.tensors) == set(original.tensors)
    for name in original.tensors:  # F32 in the file: every tensor back bit for bit, q/k rows un-permuted
        np.testing.assert_array_equal(converted.to_float32(name), original.to_float32(name), err_msg=name)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["num_key_value_heads"] == 2
    ids = list(range(3, 40))
    a, b = Model.load(tiny_bytelevel_llama), Model.load(out)
    np.testing.assert_array_equal(a.forward(ids, a.new_cache(64)), b.forward(ids, b.new_cache(64)))
    ours, theirs = Tokenizer(out), Tokenizer(tiny_bytelevel_llama)
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == CHATML_TEMPLATE and tc["eos_token"] == "<|im_end|>"


def test_large_gguf_imports_into_shards(tiny_bytelevel_llama, tmp_path, monkeypatch):
    """A model past the shard size is written as shards plus an index, and reads back bit for bit."""
    from awqinfer.engine.checkpoint import safetensors as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "SHARD_BYTES", 64 * 1024)
    out = convert_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", tiny_bytelevel_llama, "F32"), tmp_path / "hf")
    assert not (out / "model.safetensors").exists() and len(list(out.glob("model-*-of-*.safetensors"))) > 1
    original, converted = Checkpoint(tiny_bytelevel_llama), Checkpoint(out)
    assert set(converted.tensors) == set(original.tensors)
    for name in original.tensors:
        np.testing.assert_array_equal(converted.to_float32(name), original.to_float32(name), err_msg=name)


@pytest.mark.parametrize("qtype,tol", [("F16", 1e-3), ("Q8_0", 1e-2)])
def test_tiny_gguf_quantized_types_dequantize(tiny_bytelevel_llama, tmp_path, qtype, tol):
    out = convert_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", tiny_bytelevel_llama, qtype), tmp_path / "hf")
    original, converted = Checkpoint(tiny_bytelevel_llama), Checkpoint(out)
    for name in original.tensors:
        a, b = original.to_float32(name), converted.to_float32(name)
        assert np.abs(a - b).max() <= tol * np.abs(a).max(), name


def test_tiny_gguf_sentencepiece_tokenizer_matches_transformers(tmp_path):
    """A Llama-2 style vocabulary (no merges, scores, byte fallback) read as transformers reads it."""
    from transformers import AutoTokenizer

    hf = make_model(tmp_path / "sp", "llama")  # SentencePiece-style tokenizer.json
    gguf_path = write_tiny_gguf(tmp_path / "sp.gguf", hf)
    out = convert_gguf(gguf_path, tmp_path / "hf")
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    ours = Tokenizer(out)
    for text in TEXTS + ["Hello", " leading space", "</s> and <s> inside"]:
        ids = ours.encode(text)
        assert ids == ref(text).input_ids, text
        assert ids[0] == 1  # BOS, as llama.cpp adds it to SentencePiece vocabularies
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    assert ours.decode(ours.encode("byte fallback: 🎉 中文")) == "byte fallback: 🎉 中文"
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert (tc["bos_token"], tc["eos_token"], tc["unk_token"], tc["add_bos_token"]) == ("<s>", "</s>", "<unk>", True)


def test_bad_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="bad.gguf"):
        convert_gguf(bad, tmp_path / "out")
    with pytest.raises(CheckpointError, match="no such GGUF"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")


# --- the real SmolLM2 GGUF against transformers' GGUF loader -----------------------------------


@pytest.fixture(scope="module")
def transformers_smollm2(smollm2_gguf):
    """transformers' own reading of the GGUF: model dequantized to fp32, and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=smollm2_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, dtype=torch.float32, **kwargs)
    return model.eval(), AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kwargs)


def test_smollm2_logits_match_transformers(smollm2_fp32, transformers_smollm2):
    import torch

    ref_model, ref_tok = transformers_smollm2
    ids = ref_tok("The capital of France is Paris. The capital of Germany is Berlin. def f(x):\n    return").input_ids
    with torch.no_grad():
        expect = ref_model(torch.tensor([ids])).logits[0].numpy()
    model = Model.load(smollm2_fp32)
    got = model.forward(ids, model.new_cache(len(ids)))
    rel = np.abs(got - expect).max() / np.abs(expect).max()
    assert rel < 1e-3, rel
    assert (got.argmax(-1) == expect.argmax(-1)).all()


def test_smollm2_tokenizer_matches_transformers(smollm2_fp32, transformers_smollm2):
    _, ref_tok = transformers_smollm2
    ours = Tokenizer(smollm2_fp32)
    for text in TEXTS:
        assert ours.encode(text) == ref_tok(text).input_ids, text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    assert ours.vocab_size == 49152
    tc = json.loads((smollm2_fp32 / "tokenizer_config.json").read_text())
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"]) == (ref_tok.bos_token, ref_tok.eos_token,
                                                                   ref_tok.pad_token)


def test_smollm2_chat_template_matches_transformers(smollm2_fp32, transformers_smollm2):
    import awqinfer

    _, ref_tok = transformers_smollm2
    llm = awqinfer.load(smollm2_fp32)
    conversations = [
        [{"role": "user", "content": "What is the origin of the phrase Hello, World?"}],
        [{"role": "system", "content": "You are a friendly assistant"},
         {"role": "user", "content": "Why is pizza so good"},
         {"role": "assistant", "content": "Cheese."},
         {"role": "user", "content": "中文? 🎉"}],
    ]
    for messages in conversations:
        expect = ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True) == expect


def test_converted_directory_loads_in_transformers(smollm2_fp32, transformers_smollm2):
    """The directory is a plain Hugging Face checkpoint: transformers reads it and computes the same logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_model, ref_tok = transformers_smollm2
    hf = AutoModelForCausalLM.from_pretrained(smollm2_fp32, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_fp32)
    ids = ref_tok("Tell me a story").input_ids
    assert tok("Tell me a story").input_ids == ids
    with torch.no_grad():
        np.testing.assert_array_equal(hf(torch.tensor([ids])).logits.numpy(),
                                      ref_model(torch.tensor([ids])).logits.numpy())
