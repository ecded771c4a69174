"""GGUF import: a llama.cpp model file -> a Hugging Face checkpoint directory.

A GGUF file holds metadata (``llama.block_count``, ``tokenizer.ggml.tokens``, ...)
and tensors under llama.cpp's names, often quantized (Q4_1, Q8_0, Q4_K, ...).
``convert_gguf`` writes what awqinfer (and transformers) read instead:

    config.json, generation_config.json        from the ``llama.*`` / ``tokenizer.ggml.*`` metadata
    model.safetensors (+ shards past 2 GiB)   every tensor dequantized to float32, HF names
    tokenizer.json, tokenizer_config.json      byte-level BPE (vocab + merges) or SentencePiece BPE
                                               (vocab + scores, byte fallback), chat template

The one real transformation: llama.cpp's converter (``convert_hf_to_gguf.py``,
``LlamaModel.permute``) reorders the rows of q_proj and k_proj of every head
from Hugging Face's half-split RoPE layout to interleaved pairs, because its
kernels rotate adjacent elements. We rotate halves ("rotate_half"), so the rows
are put back: ``unpermute`` is the exact inverse of that permutation.

Tensors are dequantized one at a time with ``gguf.quants.dequantize`` and handed
to safetensors.py's ShardWriter, which writes a shard every 2 GiB: a large model is
never held in memory whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...errors import CheckpointError
from .safetensors import ShardWriter

# llama.cpp tensor names -> Hugging Face names ("{l}" is the layer index).
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# tokenizer.ggml.pre -> the regex that splits text before byte-level BPE. None: GPT-2's
# own regex, built into the ByteLevel pre-tokenizer (llama.cpp's "default").
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "default": None, "gpt2": None, "gpt-2": None, "smollm": None,
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: each byte as a printable character (openai/gpt-2 encoder.py)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


BYTE_ALPHABET = _bytes_to_unicode()  # byte -> character, how byte-level vocabularies spell tokens
TOKEN_CONTROL = 3  # tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte
TOKEN_USER_DEFINED = 4


def unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: (n_heads*D, K) interleaved pairs -> HF half-split rows.

    llama.cpp: ``w.reshape(n_heads, 2, D/2, K).swapaxes(1, 2)``; the inverse reshapes
    to (n_heads, D/2, 2, K) and swaps back.
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise CheckpointError(f"cannot unpermute a tensor of {rows} rows over {n_heads} heads")
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@dataclass
class GGUFFile:
    """A parsed GGUF file: its metadata as Python values and its tensors by llama.cpp name."""

    path: Path
    metadata: dict
    tensors: dict  # llama.cpp name -> gguf ReaderTensor

    @classmethod
    def open(cls, path: str | Path) -> "GGUFFile":
        import gguf

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such GGUF file")
        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as e:  # the reader raises ValueError / struct errors on a bad file
            raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None
        metadata = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
        return cls(path, metadata, {t.name: t for t in reader.tensors})

    def need(self, key: str):
        if key not in self.metadata:
            raise CheckpointError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return self.metadata[key]

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantized to float32, in numpy (row-major, HF) shape."""
        from gguf import quants

        t = self.tensors[name]
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists ne0 (the fastest axis) first
        try:
            values = quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which gguf cannot dequantize"
            ) from None
        return np.asarray(values, dtype=np.float32).reshape(shape)


def hf_config(g: GGUFFile) -> dict:
    """config.json for a llama-architecture GGUF."""
    arch = g.need("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{g.path}: GGUF architecture {arch!r} is not supported; awqinfer imports 'llama'")
    a = lambda key: g.need(f"llama.{key}")
    hidden, heads = int(a("embedding_length")), int(a("attention.head_count"))
    head_dim = int(g.metadata.get("llama.attention.key_length", hidden // heads))
    rope_dim = int(g.metadata.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise CheckpointError(f"{g.path}: partial RoPE ({rope_dim} of {head_dim} dims) is not supported")
    if "rope_freqs.weight" in g.tensors:
        raise CheckpointError(f"{g.path}: per-frequency RoPE factors (rope_freqs, Llama 3.1 style) are not supported")
    tokens = g.need("tokenizer.ggml.tokens")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(g.metadata.get("llama.vocab_size", len(tokens))),
        "hidden_size": hidden,
        "intermediate_size": int(a("feed_forward_length")),
        "num_hidden_layers": int(a("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g.metadata.get("llama.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(a("context_length")),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(g.metadata.get("llama.rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "attention_bias": "blk.0.attn_q.bias" in g.tensors,
        "mlp_bias": False,
        "torch_dtype": "float32",
        "bos_token_id": g.metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g.metadata.get("tokenizer.ggml.eos_token_id"),
    }
    scaling = g.metadata.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise CheckpointError(f"{g.path}: RoPE scaling {scaling!r} is not supported for GGUF import")
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(g.need("llama.rope.scaling.factor"))}
    if config["attention_bias"] and "blk.0.attn_output.bias" not in g.tensors:
        raise CheckpointError(f"{g.path}: q/k/v biases without an o_proj bias do not fit a Llama config")
    return config


def hf_tensor_names(g: GGUFFile) -> dict[str, str]:
    """llama.cpp name -> Hugging Face name for every tensor; an unknown tensor is an error."""
    names = {}
    for name in g.tensors:
        if name in GLOBAL_NAMES:
            names[name] = GLOBAL_NAMES[name]
            continue
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
            names[name] = f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}"
            continue
        raise CheckpointError(f"{g.path}: unknown GGUF tensor {name!r} for a Llama model")
    return names


def _tensor_to_hf(g: GGUFFile, name: str, config: dict) -> np.ndarray:
    """One tensor in Hugging Face's layout: dequantized, q/k rows un-permuted."""
    w = g.tensor(name)
    if name.endswith(("attn_q.weight", "attn_q.bias")):
        w = unpermute(w, config["num_attention_heads"])
    elif name.endswith(("attn_k.weight", "attn_k.bias")):
        w = unpermute(w, config["num_key_value_heads"])
    return w


# --- tokenizer -----------------------------------------------------------------


def build_tokenizer(g: GGUFFile):
    """A ``tokenizers.Tokenizer`` from the GGUF's vocabulary: byte-level BPE ('gpt2', merges in the file)
    or SentencePiece BPE ('llama', byte fallback, merges rebuilt from the scores)."""
    from tokenizers import AddedToken, processors

    kind = g.need("tokenizer.ggml.model")
    builders = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
    if kind not in builders:
        raise CheckpointError(f"{g.path}: tokenizer type {kind!r} is not supported; GGUF import reads "
                              "byte-level BPE ('gpt2') and SentencePiece BPE ('llama') vocabularies")
    tokens = g.need("tokenizer.ggml.tokens")
    tok = builders[kind](g, tokens)
    types = g.metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    special = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types) if k == TOKEN_CONTROL]
    user = [AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types) if k == TOKEN_USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(user)
    bos = g.metadata.get("tokenizer.ggml.bos_token_id")
    if _adds_bos(g) and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B:1", special_tokens=[(tokens[bos], bos)]
        )
    elif kind == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _adds_bos(g: GGUFFile) -> bool:
    """llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise."""
    return bool(g.metadata.get("tokenizer.ggml.add_bos_token", g.metadata["tokenizer.ggml.model"] == "llama"))


def _byte_level_bpe(g: GGUFFile, tokens: list[str]):
    """GPT-2 style: every token spelled in the byte alphabet, merges listed in the file."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = g.metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(
            f"{g.path}: pre-tokenizer {pre!r} is not supported; known: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    merges = [tuple(m.split(" ", 1)) for m in g.need("tokenizer.ggml.merges")]
    alphabet = set(BYTE_ALPHABET.values())
    spell = lambda t: t if set(t) <= alphabet else "".join(BYTE_ALPHABET[b] for b in t.encode("utf-8"))
    vocab = _unique_vocab(g, [spell(t) for t in tokens])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    split = PRE_TOKENIZERS[pre]
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(g: GGUFFile, tokens: list[str]):
    """Llama / Mistral style: "▁" for spaces, <0xNN> byte-fallback tokens, merge order from the scores."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = _unique_vocab(g, tokens)
    if "tokenizer.ggml.merges" in g.metadata:
        merges = [tuple(m.split(" ", 1)) for m in g.metadata["tokenizer.ggml.merges"]]
    else:
        merges = merges_from_scores(vocab, dict(zip(tokens, g.need("tokenizer.ggml.scores"))))
    unk = g.metadata.get("tokenizer.ggml.unknown_token_id")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None if unk is None else tokens[unk],
                               fuse_unk=True, byte_fallback=True))
    prefix = bool(g.metadata.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix else "never",
                                                 split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
    return tok


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two tokens,
    best-scored token first (ties: shorter left piece, then shorter right piece, then vocabulary order).
    The same rule as transformers' ``generate_merges``."""
    merges = []
    for token, score in scores.items():
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        pairs.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges += [(left, right, score) for left, right in pairs]
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _unique_vocab(g: GGUFFile, tokens: list[str]) -> dict[str, int]:
    vocab = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    if len(vocab) != len(tokens):
        raise CheckpointError(f"{g.path}: the vocabulary repeats {len(tokens) - len(vocab)} token(s)")
    return vocab


def tokenizer_config(g: GGUFFile) -> dict:
    """tokenizer_config.json: special tokens by name, BOS/EOS flags and the chat template."""
    tokens = g.need("tokenizer.ggml.tokens")
    name = lambda key: tokens[g.metadata[key]] if g.metadata.get(key) is not None else None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "add_bos_token": _adds_bos(g),
        "add_eos_token": bool(g.metadata.get("tokenizer.ggml.add_eos_token", False)),
        "model_max_length": int(g.metadata.get("llama.context_length", 2048)),
        "clean_up_tokenization_spaces": False,
    }
    if "tokenizer.chat_template" in g.metadata:
        config["chat_template"] = g.metadata["tokenizer.chat_template"]
    return config


def generation_config(g: GGUFFile) -> dict:
    """generation_config.json: BOS, and every id that ends a turn (EOS, and EOT when it differs)."""
    eos = [g.metadata.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
    eos = list(dict.fromkeys(int(i) for i in eos if i is not None))
    return {
        "bos_token_id": g.metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": g.metadata.get("tokenizer.ggml.padding_token_id"),
    }


# --- writing ---------------------------------------------------------------------


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = False) -> Path:
    """Convert a Llama GGUF file into a Hugging Face float32 checkpoint directory ``out_dir``."""
    g = GGUFFile.open(gguf_path)
    config = hf_config(g)
    names = hf_tensor_names(g)
    tokenizer = build_tokenizer(g)
    if tokenizer.get_vocab_size(with_added_tokens=True) != config["vocab_size"]:
        raise CheckpointError(
            f"{g.path}: the tokenizer has {tokenizer.get_vocab_size(with_added_tokens=True)} tokens "
            f"but the model {config['vocab_size']}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out)  # one tensor dequantised at a time, a shard written every 2 GiB
    for name in tqdm(g.tensors, desc="import GGUF", unit="tensor", leave=False, disable=not progress):
        writer.add(names[name], np.asarray(_tensor_to_hf(g, name, config), dtype=np.float32))
    writer.close()
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps(generation_config(g), indent=2), encoding="utf-8")
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(g), indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return out
