"""The quantizer's steps, each against an independent computation: GPTQ's update, the layer pass's order
(scales folded before rounding), the calibration set, perplexity against transformers, `awqinfer eval`."""

import json
import math

import numpy as np
import pytest

from awqinfer.engine.checkpoint.config import ModelConfig
from awqinfer.engine.checkpoint.safetensors import Checkpoint
from awqinfer.engine.model.weights import load_layer
from awqinfer.engine.quant.gptq import DAMP, gptq_quantize, refit_scales
from awqinfer.engine.quant.rounding import MAX_INT, dequantize, grid, rtn_quantize
from awqinfer.errors import InputError
from checkpoints import make_model


# --- GPTQ ------------------------------------------------------------------------------


def obq_reference(weight, gram, group_size, clip=None, act_order=False):
    """GPTQ's result computed directly (float64, no Cholesky, no lazy blocks): round column j on its group's
    grid, spread its error over the later columns through the running inverse Hessian, remove column j from it.
    With act_order the columns go by decreasing H diagonal, each group's grid fixed from the original weights."""
    w = weight.astype(np.float64)
    n, k = w.shape
    h = gram.astype(np.float64)
    h = h + DAMP * np.mean(np.diag(h)) * np.eye(k)
    h_inv = np.linalg.inv(h)
    out = np.zeros_like(w)
    grids = {}

    def group_grid(j0, part):
        if clip is not None:
            bound = clip(gram[j0:j0 + group_size, j0:j0 + group_size], part)
            part = np.clip(part, -bound, bound)
        zero, scale = grid(part[:, None, :])
        return zero[:, 0, 0], scale[:, 0].astype(np.float64)

    if act_order:
        grids = {j0: group_grid(j0, weight[:, j0:j0 + group_size]) for j0 in range(0, k, group_size)}
    order = np.argsort(-np.diag(gram), kind="stable") if act_order else range(k)
    for j in order:
        j0 = j - j % group_size
        if not act_order and j == j0:
            grids[j0] = group_grid(j0, w[:, j:j + group_size].astype(np.float32))
        zero, step = grids[j0]
        code = np.clip(np.round(w[:, j] / step) + zero, 0, MAX_INT)
        out[:, j] = (code - zero) * step
        err = (w[:, j] - out[:, j]) / h_inv[j, j]
        w -= np.outer(err, h_inv[j])  # column j itself becomes exactly its rounded value
        h_inv -= np.outer(h_inv[:, j], h_inv[j, :]) / h_inv[j, j]  # and leaves the problem
    return out


def correlated_inputs(rng, tokens, k):
    x = rng.standard_normal((tokens, k)).astype(np.float32) * rng.uniform(0.2, 3, k).astype(np.float32)
    x[:, 3] *= 10  # a salient channel
    return x + 0.5 * x[:, [0]]  # and correlated ones: where error feedback pays


@pytest.mark.parametrize("group_size,k,act_order", [(32, 256, False), (64, 320, False), (32, 256, True)])
def test_gptq_matches_a_direct_implementation_of_its_update(group_size, k, act_order):
    """320 inputs: the last lazy block is partial; act_order: columns by decreasing H diagonal, static grids."""
    from awqinfer.engine.quant.awq_search import search_clip

    rng = np.random.default_rng(group_size)
    x = correlated_inputs(rng, 1024, k)
    w = rng.standard_normal((48, k)).astype(np.float32)
    gram = x.T @ x
    for clip in (None, lambda block, part: search_clip(block, part, part.shape[1])):
        codes, zeros, scales = gptq_quantize(w, gram, group_size, clip, act_order)
        assert codes.shape == w.shape and codes.dtype == np.uint8 and codes.max() <= MAX_INT
        assert zeros.shape == scales.shape == (48, k // group_size) and scales.dtype == np.float16
        ours, ref = dequantize(codes, zeros, scales), obq_reference(w, gram, group_size, clip, act_order)
        apart = np.abs(ours - ref) > 1e-4 * np.abs(ref).max()
        err = lambda v: float(np.sum((x @ (v - w).T) ** 2))
        if clip is None:
            assert apart.mean() < 0.002  # the same weights, but for a rare tie rounded apart
        else:  # the clipping search's argmin can flip on float32 vs float64 noise, then that row's path differs
            assert apart.any(axis=1).mean() < 0.2 and err(ours) == pytest.approx(err(ref), rel=0.01)
        assert err(ours) < 0.8 * err(dequantize(*rtn_quantize(w, group_size)))


def test_scale_refit_is_the_least_squares_optimum():
    """refit_scales against numpy's lstsq on the calibration inputs: min ||X (w_n - sum_g s_g v_g)||, row by row."""
    rng = np.random.default_rng(5)
    x = correlated_inputs(rng, 512, 96)
    w = rng.standard_normal((10, 96)).astype(np.float32)
    gram = x.T @ x
    codes, zeros, scales = rtn_quantize(w, 32)
    codes[0, :32] = zeros[0, 0]  # a group whose codes are all its zero point: no scale can matter, it is kept
    new = refit_scales(w, gram, codes, zeros, scales, rows=3)  # rows=3: the row chunks end unevenly
    assert new.dtype == np.float16 and new.shape == scales.shape and new[0, 0] == scales[0, 0]
    v = (codes.reshape(10, 3, 32).astype(np.float64) - zeros[..., None])
    for n in range(1, 10):
        basis = np.stack([x.astype(np.float64)[:, g * 32:(g + 1) * 32] @ v[n, g] for g in range(3)], axis=1)
        best = np.linalg.lstsq(basis, x.astype(np.float64) @ w[n], rcond=None)[0]
        np.testing.assert_allclose(new[n].astype(np.float64), best, rtol=2e-3)
    err = lambda s: float(np.sum((x @ (dequantize(codes, zeros, s) - w).T) ** 2))
    assert err(new) < err(scales)


def test_gptq_zeroes_dead_inputs_and_keeps_the_awq_grid():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    x[:, 10] = 0  # an input that is never active
    w = rng.standard_normal((16, 64)).astype(np.float32)
    codes, zeros, scales = gptq_quantize(w, x.T @ x, 32)
    got = dequantize(codes, zeros, scales)
    assert np.all(got[:, 10] == 0) or np.allclose(got[:, 10], 0, atol=float(scales.max()))
    # the same codes rebuild the same weights through AutoAWQ's layout and the test suite's own unpacker
    from awqinfer.engine.quant.rounding import awq_tensors
    from checkpoints import autoawq_unpack

    packed = awq_tensors(codes, zeros, scales)
    q = autoawq_unpack(packed["qweight"]).T  # (N, K)
    z = autoawq_unpack(packed["qzeros"]).T  # (N, G)
    s = packed["scales"].T.astype(np.float32)
    np.testing.assert_array_equal(((q.reshape(16, 2, 32) - z[..., None]) * s[..., None]).reshape(16, 64), got)


# --- the layer pass: scales folded before rounding -----------------------------------------


@pytest.mark.parametrize("method", ["awq", "awq-gptq"])
def test_layer_pass_rounds_the_folded_weights(method, tmp_path, monkeypatch):
    """The pass folds each group's scales into the op before it, then rounds the scaled weights: the rounded
    linear is exactly rounding (nearest, or GPTQ with the scaled inputs' Gram matrix, its scales refit) of
    the folded weights. The next layer's inputs are this layer's outputs, float or rounded as the method says."""
    import dataclasses

    from awqinfer.engine.quant import layerwise

    src = make_model(tmp_path / "m", "llama", kv_heads=4)
    config, ckpt = ModelConfig.load(src), Checkpoint(src)
    x = np.random.default_rng(3).standard_normal((2, 24, config.hidden_size)).astype(np.float32)
    x[..., :4] *= 30  # salient channels, so that AWQ scales
    steps = dataclasses.replace(layerwise.METHODS[method], clip=False)
    quantizer = layerwise.LayerQuantizer(config, x.copy(), 32, steps)
    float_out = x.copy()
    stats = quantizer._run(load_layer(ckpt, config, 0), float_out)  # the float layer's input Gram matrices
    fresh = load_layer(ckpt, config, 0)
    h = (x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + config.rms_norm_eps) * fresh.input_norm).reshape(48, -1)
    np.testing.assert_allclose(stats["qkv"][0], h.T @ h, rtol=2e-4, atol=1e-3)  # qkv's input: RMSNorm(x)
    np.testing.assert_allclose(stats["qkv"][1], np.abs(h).mean(axis=0), rtol=1e-4)
    scales = {}
    fold = layerwise.fold_scales
    monkeypatch.setattr(layerwise, "fold_scales", lambda group, s: (scales.setdefault(group.name, s), fold(group, s)))
    layer = load_layer(ckpt, config, 0)
    rounded = quantizer.layer(layer)
    assert set(scales) == {"qkv", "o_proj", "gate_up", "down_proj"}
    for name, norm, rows, after in (("qkv", "input_norm", slice(128, 192), "o_proj"),  # v's rows take o_proj's s
                                    ("gate_up", "post_norm", slice(192, 384), "down_proj")):  # up's, down_proj's
        s = scales[name]
        assert s.max() / s.min() > 1.5  # AWQ did scale
        folded = getattr(fresh, name).weight * s
        folded[rows] /= scales[after][:, None]
        np.testing.assert_array_equal(getattr(layer, norm), getattr(fresh, norm) / s)
        if method == "awq":
            expected = rtn_quantize(folded, 32)
        else:
            gram = stats[name][0] / np.outer(s, s)
            expected = gptq_quantize(folded, gram, 32, act_order=steps.act_order)
            if steps.refit:
                expected = (*expected[:2], refit_scales(folded, gram, *expected))
        for got, want in zip(rounded[name], expected):
            np.testing.assert_array_equal(got, want)
        # the layer keeps the weights its outputs were last computed with: rounded, or folded float
        kept = dequantize(*rounded[name]) if steps.propagate == "quantized" else folded
        np.testing.assert_array_equal(getattr(layer, name).weight, kept)
    if steps.propagate == "quantized":  # the next layer calibrates on the rounded layer's outputs
        rounded_out = x.copy()
        quantizer._run(layer, rounded_out)
        np.testing.assert_array_equal(quantizer.x, rounded_out)
        assert np.abs(rounded_out - float_out).max() > 1e-3
    else:
        np.testing.assert_array_equal(quantizer.x, float_out)


# --- calibration text ------------------------------------------------------------------------


def test_builtin_calibration_covers_prose_code_and_chat(tiny_qwen2):
    from awqinfer.engine.quant.calibration import KINDS, calibration_windows, default_texts
    from awqinfer.engine.text.tokenizer import Tokenizer

    tok = Tokenizer(tiny_qwen2)
    texts = default_texts(tok)
    assert list(texts) == list(KINDS)
    assert "Python Software Foundation" in texts["prose"] and "assignment" in texts["prose"].lower()
    assert "def " in texts["code"] and "return" in texts["code"]
    assert texts["chat"].startswith("<|im_start|>system\n")  # the model's own template, its default system turn
    assert "<|im_start|>user\nCan you explain assert in Python?<|im_end|>" in texts["chat"]
    assert "<|im_start|>assistant\n" in texts["chat"]
    assert "```python" in texts["chat"]
    assert all(100_000 <= len(t) <= 200_000 for t in texts.values())
    assert texts == default_texts(tok)  # deterministic
    ids = calibration_windows(tok, None, 6, 64)
    assert ids.shape == (6, 64)
    streams = {kind: "," + ",".join(map(str, tok.encode(t, add_special_tokens=False))) + "," for kind, t in texts.items()}
    for i, window in enumerate(ids):  # the kinds take turns: prose, code, chat, prose, ...
        assert "," + ",".join(map(str, window)) + "," in streams[KINDS[i % 3]]


def test_calibration_windows_and_errors(tmp_path, tiny_llama):
    from awqinfer.engine.quant.calibration import calibration_windows, read_text, windows
    from awqinfer.engine.quant.quantize import quantize
    from awqinfer.engine.text.tokenizer import Tokenizer

    w = windows(list(range(1000)), 4, 100)
    assert w.shape == (4, 100) and w[1, 0] == 250
    with pytest.raises(InputError, match="has 1000 tokens; 20 samples x 100 tokens need 2000"):
        windows(list(range(1000)), 20, 100)
    with pytest.raises(InputError, match="does not exist"):
        read_text(tmp_path / "nope.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_text(bad)
    own = tmp_path / "own.txt"
    own.write_text("word " * 600)
    ids = calibration_windows(Tokenizer(tiny_llama), own, 3, 50)
    assert ids.shape == (3, 50)
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    with pytest.raises(InputError, match="short.txt has"):
        quantize(tiny_llama, tmp_path / "q", method="awq", group_size=32, calib=short, samples=8, seq_len=64)


# --- perplexity --------------------------------------------------------------------------------


def hf_strided_perplexity(directory, ids, window, stride) -> float:
    """Hugging Face's documented strided-window loop ("Perplexity of fixed-length models"), on transformers.

    The page weights each window's mean loss by its target count minus one; the loss averages over the
    targets after the model's shift, which is what is counted here, so every token weighs the same."""
    import torch

    from oracle import hf_model

    model = hf_model(directory)
    seq = torch.tensor([ids])
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq.size(1), stride):
        end = min(begin + window, seq.size(1))
        trg_len = end - prev_end
        input_ids = seq[:, begin:end]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target).loss
        valid = (target[:, 1:] != -100).sum().item()  # the tokens the loss averaged (labels shift by one)
        nll_sum += loss.item() * valid
        n_tokens += valid
        prev_end = end
        if end == seq.size(1):
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.mark.parametrize("window,stride", [(64, 32), (50, 50), (40, 7)])
def test_perplexity_matches_huggingface_strided_windows(tiny_llama, window, stride):
    pytest.importorskip("transformers")
    from awqinfer.engine.model import Model
    from awqinfer.engine.quant.perplexity import perplexity

    ids = list(np.random.default_rng(window).integers(3, 500, 150))
    ours = perplexity(Model.load(tiny_llama, kv_dtype="float32"), ids, window, stride)  # as exact as torch
    theirs, tokens = hf_strided_perplexity(tiny_llama, ids, window, stride)
    assert ours.tokens == tokens and ours.windows == math.ceil((150 - window) / stride) + 1
    assert ours.perplexity == pytest.approx(theirs, rel=1e-4)


def test_perplexity_errors(tiny_llama):
    from awqinfer.engine.model import Model
    from awqinfer.engine.quant.perplexity import perplexity, text_perplexity
    from awqinfer.engine.text.tokenizer import Tokenizer

    model = Model.load(tiny_llama)
    with pytest.raises(InputError, match="at least 2 tokens"):
        perplexity(model, [5])
    with pytest.raises(InputError, match="stride must be between 1 and the window"):
        perplexity(model, [5, 6, 7], window=8, stride=9)
    with pytest.raises(InputError, match="window must be between 2 and the model's 256 positions"):
        perplexity(model, [5, 6, 7], window=300, stride=10)
    with pytest.raises(InputError, match="max_tokens"):
        text_perplexity(model, Tokenizer(tiny_llama), "hello there", max_tokens=1)


def run_eval(*argv) -> int:
    from awqinfer.cli.main import main

    return main(["eval", "perplexity", *map(str, argv)])


def test_cli_eval_perplexity(tiny_llama, tmp_path, capsys):
    from awqinfer.engine.model import Model
    from awqinfer.engine.quant.perplexity import text_perplexity
    from awqinfer.engine.text.tokenizer import Tokenizer

    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    assert run_eval(tiny_llama, text, "--window", "64", "--stride", "32", "--max-tokens", "150", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    expected = text_perplexity(Model.load(tiny_llama), Tokenizer(tiny_llama), text.read_text(), 150, 64, 32)
    assert out["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6) and out["tokens"] == 149
    assert out["method"] == "strided windows of 64 tokens every 32"
    assert run_eval(tiny_llama, text) == 0  # default window: the tiny model's 256 positions, stride 128
    out = capsys.readouterr().out
    assert out.startswith("perplexity ") and "windows of 256 tokens every 128" in out
    assert run_eval(tiny_llama, tmp_path / "missing.txt") == 2
    assert "missing.txt does not exist" in capsys.readouterr().err
    assert run_eval(tiny_llama, text, "--window", "64", "--stride", "65") == 2
    assert "stride must be between 1 and the window (64)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_eval(tiny_llama, text, "--max-tokens", "1")
    assert e.value.code == 2
