"""The benchmark's whole pipeline on a tiny model, one repeat: it must not rot (no timing is asserted)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits beside tests/, not installed

from benchmarks import batching, report, run  # noqa: E402
from benchmarks.sections import markers, write_section  # noqa: E402

SMOKE = ["--no-peers", "--repeats", "1", "--prompt-lengths", "16,32", "--decode-prompt", "8",
         "--decode-tokens", "6", "--contexts", "64,128", "--long-tokens", "3", "--check-tokens", "6",
         "--contention-tokens", "3", "--ttft-repeats", "1", "--ttft-cold-repeats", "0", "--big", "tiny",
         "--big-tokens", "2", "--big-repeats", "1", "--bandwidth-gb", "0.02", "--quiet"]


def test_benchmark_smoke(tiny_llama_awq, tmp_path):
    assert run.main(["--model", str(tiny_llama_awq), "--out", str(tmp_path), *SMOKE]) == 0
    out = json.loads((tmp_path / "results.json").read_text())
    assert out["fast_path_matches_reference"] and all(len(c[1]) == 6 for c in out["checks"].values())
    assert set(out["kernel"]) == set(out["user"]) == {"awqinfer", "awqinfer f32-head"}
    figures = out["kernel"]["awqinfer"]
    assert set(figures) == {"prefill 16", "prefill 32", "decode 6", "decode @64", "decode @128"}
    assert all(len(v) == 1 and math.isfinite(v[0]) and v[0] > 0 for v in figures.values())
    streamed = out["user"]["awqinfer"]
    assert 1 <= streamed["tokens"][0] <= 6 and streamed["first chunk s"][0] > 0
    assert set(out["contention"]) == {"awqinfer", "awqinfer 1t", "awqinfer 2t"}
    assert out["ttft"]["warm"][0] > 0 and out["ttft"]["rss"][0] > 10e6
    big = out["big"]
    assert big["tok_s"][0] > 0 and big["peak_rss"][0] > big["rss_after_load"][0] / 2 and big["file_bytes"] > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| decode 6 |" in text and "Time to first token" in text and "Beside one busy process" in text
    assert "awqinfer equal (6 tokens); awqinfer f32-head equal (6 tokens)" in text
    if importlib.util.find_spec("matplotlib"):  # the bench extra's plot
        assert (tmp_path / "decode_vs_context.png").stat().st_size > 1000


def test_each_script_rewrites_only_its_own_section_of_results(tmp_path):
    """Re-running a benchmark replaces its section and keeps the hand-written notes and other scripts' tables."""
    path = tmp_path / "RESULTS.md"
    path.write_text("## Notes written by hand\n\nkeep me\n")
    write_section(path, "benchmarks.run", "# awqinfer benchmarks\n\nrun 1", first=True)
    write_section(path, "ray_bench", "## Ray Serve\n\nray 1")
    write_section(path, "benchmarks.run", "# awqinfer benchmarks\n\nrun 2", first=True)
    write_section(path, "ray_bench", "## Ray Serve\n\nray 2")
    text = path.read_text()
    assert text.startswith(markers("benchmarks.run")[0] + "\n# awqinfer benchmarks\n\nrun 2\n")
    assert "keep me" in text and "ray 2" in text and "run 1" not in text and "ray 1" not in text
    assert text.index("keep me") < text.index("ray 2") and text.count(markers("ray_bench")[1]) == 1


def test_benchmark_withholds_figures_when_fast_path_differs(tiny_llama_awq, tmp_path, monkeypatch):
    monkeypatch.setattr(run, "check_fast_path", lambda model, ids, n: (False, [1, 2], [1, 3]))
    argv = ["--model", str(tiny_llama_awq), "--out", str(tmp_path), *SMOKE, "--no-ttft", "--big", "none",
            "--lm-head", "int8", "--no-contention"]
    assert run.main(argv) == 1
    out = json.loads((tmp_path / "results.json").read_text())
    assert all(math.isnan(v[0]) for v in out["kernel"]["awqinfer"].values())
    assert all(math.isnan(v[0]) for v in out["user"]["awqinfer"].values())
    text = (tmp_path / "RESULTS.md").read_text()
    assert "DIFFERENT: awqinfer figures withheld" in text
    assert "| decode 6 | - |" in text


def test_synthetic_checkpoint_loads_as_autoawq(tmp_path):
    """The 7B-shaped writer's tensors pass the loader's checks (names, shapes, dtypes), at a tiny size."""
    from awqinfer.engine.model import Model
    from benchmarks import synth

    size = synth.write_checkpoint(tmp_path, synth.TINY)
    model = Model.load(tmp_path)
    assert size == (tmp_path / "model.safetensors").stat().st_size
    assert model.config.quant.group_size == synth.TINY["group"]
    logits = model.forward([1, 2], model.new_cache(4))
    assert logits.shape == (2, synth.TINY["vocab"]) and all(map(math.isfinite, logits.ravel()))
    cache = model.new_cache(4)
    model.forward([1], cache)
    assert synth.weight_bytes_per_token(model) > size / 2


def test_http_benchmark_smoke(default_model, tmp_path):
    """benchmarks/http_bench.py end to end, one repeat, 1 and 2 clients, without llama-server: its section
    lands in RESULTS.md."""
    from benchmarks import http_bench

    (tmp_path / "RESULTS.md").write_text("# awqinfer benchmarks\n\nearlier figures\n")
    assert http_bench.main(["--repeats", "1", "--max-tokens", "4", "--clients", "1,2", "--llama-server", "",
                            "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "http_results.json").read_text())
    assert set(out["engines"]) == {"awqinfer in-process", "awqinfer serve"}
    for runs in out["engines"].values():
        assert len(runs) == 1 and runs[0]["ttft"] > 0 and runs[0]["tokens"] >= 1
    for rounds in out["concurrent"].values():
        assert [r["clients"] for r in rounds] == [1, 2] and all(r["mean_ttft"] > 0 for r in rounds)
        assert rounds[1]["tokens"] == 2 * rounds[0]["tokens"]  # greedy: both clients get the same reply
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# awqinfer benchmarks\n\nearlier figures\n") and "HTTP overhead" in text
    assert "llama-server: not measured" in text
    http_bench.main(["--repeats", "1", "--max-tokens", "4", "--clients", "", "--llama-server", "",
                     "--out", str(tmp_path)])
    assert (tmp_path / "RESULTS.md").read_text().count(markers("http_bench")[0]) == 1  # replaced, not appended twice


def test_batching_benchmark_smoke(tiny_llama_awq, tmp_path):
    """benchmarks/batching.py on a tiny model: every stream count and context measured, and rendered."""
    out_file = tmp_path / "batching.json"
    assert batching.main(["--model", str(tiny_llama_awq), "--streams", "1,2", "--prompt-tokens", "16", "--tokens", "4",
                          "--contexts", "32,64", "--long-tokens", "2", "--out", str(out_file)]) == 0
    b = json.loads(out_file.read_text())
    assert set(b["streams"]) == {"1", "2"} and all(r["first_chunk_s"] > 0 for r in b["streams"].values())
    assert set(b["kv"]) == {"float16", "float32"} and all(set(v) == {"32", "64"} for v in b["kv"].values())
    text = "\n".join(report.batching_section(b))
    assert "| 2 |" in text and "| gain |" in text


def test_the_batching_aggregate_counts_only_the_time_every_stream_decodes():
    """From the last stream's first chunk (excluded) to the first stream's last: 4 chunks in 1.5 s here."""
    assert batching.all_decoding([[0.0, 1.0, 2.0, 3.0], [1.5, 2.0, 3.0, 4.0]]) == 4 / 1.5
    assert math.isnan(batching.all_decoding([[0.0, 1.0], [2.0, 3.0]]))  # never all decoding at once


def test_a_child_process_peak_rss_is_its_own_not_the_benchmarks():
    """benchmarks' child(): a small command spawned from a large process reads small (Linux's ru_maxrss of a
    fork child counts its parent's memory: an 857 MB benchmark process once read 857 MB for llama-bench);
    a command that allocates 160 MB reads at least that; a failure names the command and its stderr."""
    from benchmarks.measure import child

    ballast = np.ones(300_000_000 // 8)  # this process: 300 MB more, touched
    t_first, t_exit, peak, out = child([sys.executable, "-c", "print('ready', flush=True)"], first_output=True)
    assert out == "ready\n" and 0 < t_first <= t_exit and peak < 100e6, (peak, ballast.size)
    _, _, peak, _ = child([sys.executable, "-c", "import numpy as np; print(np.ones(20_000_000).sum())"])
    assert peak >= 160e6
    with pytest.raises(RuntimeError, match="failed \\(3\\): no luck"):
        child([sys.executable, "-c", "import sys; sys.stderr.write('no luck'); sys.exit(3)"])
