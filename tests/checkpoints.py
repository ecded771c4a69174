"""Tiny real checkpoints for tests, written in the exact Hugging Face layout.

Random weights, but every file is what a real export holds: config.json,
generation_config.json, model.safetensors (or shards + index), tokenizer.json
trained with ``tokenizers``, tokenizer_config.json with a real chat template.

The AWQ packing here is written independently of awqinfer's, from AutoAWQ's
layout: ``awq/modules/linear/gemm.py`` (WQLinear_GEMM.from_linear) packs 8
output columns per int32 with ``order_map = [0, 2, 4, 6, 1, 3, 5, 7]``, the
i-th nibble (bits 4i..4i+3) holding column order_map[i]; qzeros are packed the
same way; scales are fp16 [in/group, out].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

AUTOAWQ_ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# deepseek-ai/deepseek-coder-6.7b-instruct, tokenizer_config.json "chat_template", verbatim (JSON and
# Python escapes agree here). Its bos_token there is "<｜begin▁of▁sentence｜>", eos_token "<|EOT|>".
DEEPSEEK_CODER_TEMPLATE = "{% if not add_generation_prompt is defined %}\n{% set add_generation_prompt = false %}\n{% endif %}\n{%- set ns = namespace(found=false) -%}\n{%- for message in messages -%}\n    {%- if message['role'] == 'system' -%}\n        {%- set ns.found = true -%}\n    {%- endif -%}\n{%- endfor -%}\n{{bos_token}}{%- if not ns.found -%}\n{{'You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and you only answer questions related to computer science. For politically sensitive questions, security and privacy issues, and other non-computer science questions, you will refuse to answer\\n'}}\n{%- endif %}\n{%- for message in messages %}\n    {%- if message['role'] == 'system' %}\n{{ message['content'] }}\n    {%- else %}\n        {%- if message['role'] == 'user' %}\n{{'### Instruction:\\n' + message['content'] + '\\n'}}\n        {%- else %}\n{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{% if add_generation_prompt %}\n{{'### Response:'}}\n{% endif %}"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello, world!",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Once upon a time there was a small model that could count: one, two, three, four.",
    "Numba compiles Python functions to fast machine code. Weights are packed four bits at a time.",
    "import numpy as np\nx = np.zeros((4, 4), dtype=np.float32)\nfor i in range(4):\n    x[i, i] = 1.0",
    "Pizza is good because of cheese, tomato and bread. Questions? Answers! Maybe...",
] * 20


def tiny_config(arch: str = "llama", *, rope_scaling: dict | None = None, tie: bool = False,
                vocab_size: int = 512, hidden: int = 64, intermediate: int = 192, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, max_positions: int = 256, rope_form: str = "legacy") -> dict:
    """A small config.json dict; ``rope_form`` 'legacy' (rope_theta + rope_scaling) or 'v5' (rope_parameters)."""
    d = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch if arch == "llama" else "qwen2",
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_positions, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "tie_word_embeddings": tie, "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2,
    }
    theta = 10000.0 if arch == "llama" else 1000000.0
    if rope_form == "v5":
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, **(rope_scaling or {})}
    else:
        d["rope_theta"] = theta
        if rope_scaling:
            d["rope_scaling"] = rope_scaling
    if arch == "qwen2":
        d["use_sliding_window"] = False
    return d


def random_weights(config: dict, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """HF-named random weights for ``config`` (nn.Linear layout: [out, in])."""
    rng = np.random.default_rng(seed)
    H, I, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    D = H // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * D, config["num_key_value_heads"] * D
    qwen = config["architectures"][0].startswith("Qwen2")

    def w(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape) * scale).astype(dtype)

    t = {"model.embed_tokens.weight": w(V, H, scale=1.0), "model.norm.weight": (1 + 0.1 * w(H, scale=1.0))}
    for l in range(config["num_hidden_layers"]):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * w(H, scale=1.0)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * w(H, scale=1.0)
        for name, (o, i) in {"q_proj": (q, H), "k_proj": (kv, H), "v_proj": (kv, H), "o_proj": (H, q)}.items():
            t[p + f"self_attn.{name}.weight"] = w(o, i)
        if qwen:
            for name, o in {"q_proj": q, "k_proj": kv, "v_proj": kv}.items():
                t[p + f"self_attn.{name}.bias"] = w(o, scale=0.5)
        elif config.get("attention_bias"):  # Llama's attention_bias: q, k, v and o carry one
            for name, o in {"q_proj": q, "k_proj": kv, "v_proj": kv, "o_proj": H}.items():
                t[p + f"self_attn.{name}.bias"] = w(o, scale=0.5)
        t[p + "mlp.gate_proj.weight"] = w(I, H)
        t[p + "mlp.up_proj.weight"] = w(I, H)
        t[p + "mlp.down_proj.weight"] = w(H, I)
    if not config.get("tie_word_embeddings"):
        t["lm_head.weight"] = w(V, H)
    return {k: v.astype(dtype) for k, v in t.items()}


def autoawq_pack(intweight: np.ndarray) -> np.ndarray:
    """[rows, cols] ints 0..15 -> int32 [rows, cols/8], AutoAWQ's interleaved nibble order."""
    rows, cols = intweight.shape
    packed = np.zeros((rows, cols // 8), dtype=np.uint32)
    for col in range(cols // 8):
        for i in range(8):
            packed[:, col] |= intweight[:, col * 8 + AUTOAWQ_ORDER_MAP[i]].astype(np.uint32) << (4 * i)
    return packed.view(np.int32)


def autoawq_unpack(packed: np.ndarray) -> np.ndarray:
    """Inverse of autoawq_pack, nibble by nibble: int32 [rows, cols/8] -> int [rows, cols]."""
    rows, words = packed.shape
    u = packed.view(np.uint32)
    out = np.zeros((rows, words * 8), dtype=np.int64)
    for col in range(words):
        for i in range(8):
            out[:, col * 8 + AUTOAWQ_ORDER_MAP[i]] = (u[:, col] >> (4 * i)) & 15
    return out


def awq_quantize(weight: np.ndarray, group_size: int) -> dict[str, np.ndarray]:
    """Round-to-nearest asymmetric 4-bit of an nn.Linear weight [out, in], as AutoAWQ stores it."""
    w = weight.astype(np.float32).T  # [in, out]
    k, n = w.shape
    g = w.reshape(k // group_size, group_size, n)
    lo, hi = g.min(axis=1), g.max(axis=1)
    scales = np.maximum(hi - lo, 1e-5) / 15.0
    zeros = np.clip(np.round(-lo / scales), 0, 15)
    scales16 = scales.astype(np.float16)
    s = scales16.astype(np.float32)
    q = np.clip(np.round(g / s[:, None, :]) + zeros[:, None, :], 0, 15).astype(np.int64).reshape(k, n)
    return {"qweight": autoawq_pack(q), "qzeros": autoawq_pack(zeros.astype(np.int64)), "scales": scales16}


def awq_dequantize(qweight, qzeros, scales, group_size: int) -> np.ndarray:
    """The oracle's dequantisation: AutoAWQ tensors -> nn.Linear weight [out, in] f32."""
    q = autoawq_unpack(qweight).astype(np.float32)
    z = np.repeat(autoawq_unpack(qzeros).astype(np.float32), group_size, axis=0)
    s = np.repeat(scales.astype(np.float32), group_size, axis=0)
    return ((q - z) * s).T.copy()


def quantize_checkpoint(tensors: dict, group_size: int, skip: tuple = ()) -> dict:
    """Replace every linear ``.weight`` of the decoder layers by AutoAWQ tensors (except ``skip``)."""
    out = {}
    for name, t in tensors.items():
        module = name.rsplit(".", 1)[0]
        if name.endswith("_proj.weight") and not any(s in module for s in skip):
            for suffix, value in awq_quantize(t, group_size).items():
                out[f"{module}.{suffix}"] = value
        else:
            out[name] = t
    return out


def dequantized(tensors: dict, group_size: int) -> dict:
    """The dense fp32 twin of an AWQ checkpoint, for the transformers oracle."""
    out = {}
    for name, t in tensors.items():
        module, suffix = name.rsplit(".", 1)
        if suffix == "qweight":
            out[module + ".weight"] = awq_dequantize(
                t, tensors[module + ".qzeros"], tensors[module + ".scales"], group_size)
        elif suffix not in ("qzeros", "scales"):
            out[name] = t.astype(np.float32) if t.dtype.kind == "f" else t
    return out


def train_tokenizer(style: str, vocab_size: int = 400) -> str:
    """A tokenizer.json string: 'sentencepiece' (Llama-2 style, byte fallback) or 'bytelevel' (Qwen/GPT-2)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(CORPUS, trainer)
        return tok.to_str()

    # SentencePiece-like BPE as in Llama-2's tokenizer.json: "▁" for spaces, a
    # prepended "▁", byte-fallback tokens <0x00>..<0xFF>, BOS added by the post-processor.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(CORPUS, trainer)
    d = json.loads(tok.to_str())
    trained = d["model"]["vocab"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for token, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    d["model"]["vocab"] = vocab
    d["model"]["byte_fallback"] = True
    d["pre_tokenizer"] = None
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    d["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    for added in d["added_tokens"]:
        added["id"] = vocab[added["content"]]
    return json.dumps(d, ensure_ascii=False)


def write_checkpoint(directory: Path, config: dict, tensors: dict, *, shards: int = 1,
                     tokenizer: str | None = None, chat_template: str | None = None) -> Path:
    """Write config.json, generation_config.json, safetensors (optionally sharded) and tokenizer files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")}))
    names = sorted(tensors)
    if shards == 1:
        save_file({n: np.ascontiguousarray(tensors[n]) for n in names}, str(directory / "model.safetensors"))
    else:
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: np.ascontiguousarray(tensors[n]) for n in part}, str(directory / fname))
            weight_map.update({n: fname for n in part})
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    if tokenizer:
        (directory / "tokenizer.json").write_text(train_tokenizer(tokenizer), encoding="utf-8")
        if tokenizer == "bytelevel":
            special = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        else:
            special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        tc = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
        if chat_template:
            tc["chat_template"] = chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(tc, indent=2), encoding="utf-8")
    return directory


def make_model(directory: Path, arch: str = "llama", *, awq_group: int | None = None, seed: int = 0,
               dtype=np.float32, shards: int = 1, **config_kwargs) -> Path:
    """One call for a complete tiny checkpoint: config, weights (dense or AWQ), tokenizer, template."""
    config = tiny_config(arch, **config_kwargs)
    tensors = random_weights(config, seed=seed, dtype=dtype)
    if awq_group:
        tensors = quantize_checkpoint(tensors, awq_group)
        config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": awq_group,
                                         "zero_point": True, "version": "gemm", "modules_to_not_convert": None}
        config["torch_dtype"] = "float16"
    style = "sentencepiece" if arch == "llama" else "bytelevel"
    if arch != "llama":
        config["eos_token_id"] = 2  # <|im_end|> in the byte-level vocab
        config["bos_token_id"] = None
    template = LLAMA2_TEMPLATE if arch == "llama" else CHATML_TEMPLATE
    return write_checkpoint(directory, config, tensors, shards=shards, tokenizer=style, chat_template=template)


def set_chat_template(directory: Path, template: str | None, **special_tokens) -> Path:
    """Rewrite a checkpoint's tokenizer_config.json with another chat template (None: remove it) and tokens."""
    path = Path(directory) / "tokenizer_config.json"
    tc = json.loads(path.read_text(encoding="utf-8"))
    tc.pop("chat_template", None)
    if template is not None:
        tc["chat_template"] = template
    tc.update(special_tokens)
    path.write_text(json.dumps(tc, indent=2, ensure_ascii=False), encoding="utf-8")
    return Path(directory)
