"""``awqinfer trace``: the engine's record of one generation, the text report, and the HTML page.

What must hold: the trace draws the tokens ``run`` draws with the same inputs and seed; every
layer of every forward is reported; each sampling step's probabilities are a distribution
(the last one sums to 1 over the tokens it keeps); the norms and attention probabilities are
transformers' on the same weights; the page opens in headless Chromium without console errors
and fetches nothing.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

import numpy as np
import pytest

import awqinfer
from awqinfer.engine.text.generate import Sequence
from awqinfer.engine.text.inputs import parse_inputs
from awqinfer.engine.trace import TOP, default_heads, trace
from test_cuda import HAS_NUMBA_CUDA, NO_NUMBA_CUDA, child_pytest

SAMPLED = {"max_tokens": 10, "seed": 11, "temperature": 0.9, "top_k": 3, "top_p": 0.95, "repetition_penalty": 1.3,
           "frequency_penalty": 0.5, "presence_penalty": 0.3}
STEP_NAMES = ["logits", "repetition_penalty", "frequency_presence_penalty", "temperature_scale", "top_k_filter",
              "top_p_filter", "softmax"]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "awqinfer", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("fixture", ["tiny_llama_awq", "tiny_qwen2"])
def test_trace_draws_what_run_draws_and_reports_every_layer(fixture, request):
    llm = awqinfer.load(request.getfixturevalue(fixture))
    inputs = {"prompt": "Once upon a time", **SAMPLED}
    t = trace(llm, inputs)

    # the same tokens as run(), which goes through the scheduler and the compiled decode step
    req = parse_inputs(inputs)
    ids = llm.prompt_ids(req)
    scheduled = [tok for tok, _ in llm.scheduler.submit(Sequence(llm.model, ids, req.sampling, llm.stop_ids))]
    drawn = [s.token for s in t.steps if s.token is not None]
    assert drawn == scheduled
    result = llm.run(inputs)
    assert (t.response, t.finish_reason) == (result["response"], result["finish_reason"])
    assert t.prompt_ids == ids and t.sequence == ids + drawn

    c = llm.model.config
    assert [s.kind for s in t.steps] == ["prefill"] + ["decode"] * (len(drawn) - 1)
    for step in t.steps:
        assert [layer.index for layer in step.layers] == list(range(c.num_hidden_layers))
        for a, b in zip(step.layers, step.layers[1:]):
            assert a.norm_out == b.norm_in  # what leaves a layer enters the next
        for layer in step.layers:
            assert all(np.isfinite([layer.norm_in, layer.norm_mid, layer.norm_out]))
            assert layer.seconds > 0
            assert set(layer.attention) == set(default_heads(c))
            for top in layer.attention.values():
                positions, probs = zip(*top)
                assert len(top) == min(TOP, step.start + len(step.ids)) and max(positions) <= step.start + len(step.ids) - 1
                assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
        assert step.kv.positions == step.start + len(step.ids) <= step.kv.allocated <= step.kv.capacity
        assert step.kv.nbytes == step.kv.allocated * step.kv.bytes_per_position

        # each sampling step, in sampling.py's order; every one is on with these inputs
        assert [s.name for s in step.sampling] == STEP_NAMES
        assert all(s.active for s in step.sampling)
        final = step.sampling[-1]
        assert final.kept <= 3  # top_k 3 (then top_p): the top list holds every token left
        assert abs(sum(cand.prob for cand in final.top) - 1) < 1e-9
        assert all(cand.prob == 0 for cand in final.top[final.kept:])
        assert step.sampling[4].kept <= 3 <= step.sampling[3].kept
        for s in step.sampling:
            assert sum(cand.prob for cand in s.top) <= 1 + 1e-9
        assert step.token in [cand.token for cand in final.top[:final.kept]]
        assert step.token_prob == next(cand.prob for cand in final.top if cand.token == step.token)
    assert t.steps[-1].finish_reason == t.finish_reason and all(s.finish_reason is None for s in t.steps[:-1])
    assert "".join(s.text for s in t.steps) == t.response
    assert len(t.weights) == c.num_hidden_layers + 1 and all(w.nbytes > 0 for w in t.weights)


def test_trace_is_transformers_on_the_same_weights(tiny_llama, tmp_path):
    """Norms, attention probabilities and the sampler's first step, against transformers (eager attention)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    llm = awqinfer.load(tiny_llama, kv_dtype="float32")
    temperature = 0.7
    t = trace(llm, {"prompt": "The quick brown fox", "max_tokens": 3, "seed": 5, "temperature": temperature},
              heads=[0, 1, 3])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    sequence = t.sequence[:-1]  # the last token drawn is never fed back
    with torch.no_grad():
        out = hf(torch.tensor([sequence]), output_hidden_states=True, output_attentions=True)
    c = llm.model.config
    for step in t.steps:
        row = step.start + len(step.ids) - 1  # the step's last row
        for layer in step.layers:
            norm = out.hidden_states[layer.index][0, row].norm().item()
            assert layer.norm_in == pytest.approx(norm, rel=1e-4)
            attention = out.attentions[layer.index][0, :, row].numpy()  # (heads, positions)
            for h, top in layer.attention.items():
                for position, prob in top:
                    assert prob == pytest.approx(attention[h, position], abs=1e-5)
        probs = torch.softmax(out.logits[0, row].double(), -1).numpy()
        scaled = torch.softmax(out.logits[0, row].double() / temperature, -1).numpy()
        for cand in step.readable_top:  # the readable lm_head: transformers' logits
            assert cand.prob == pytest.approx(probs[cand.token], abs=1e-5)
        assert [cand.token for cand in step.readable_top] == list(np.argsort(-probs, kind="stable")[:TOP])
        # what is sampled: the compiled step's logits for a generated token (as run), close to the readable ones
        assert (step.compiled_seconds is None) == (step.kind == "prefill")
        assert step.kind == "prefill" or (step.compiled_top_diff < 1e-3 and step.compiled_diff < 0.1)
        tolerance = 1e-5 if step.kind == "prefill" else 2e-3
        for cand in step.sampling[0].top:
            assert cand.prob == pytest.approx(probs[cand.token], abs=tolerance)
        temperature_step = next(s for s in step.sampling if s.name == "temperature_scale")
        for cand in temperature_step.top:
            assert cand.prob == pytest.approx(scaled[cand.token], abs=tolerance)
    n = t.maps.shape[2]
    assert n == len(sequence)
    for l in range(c.num_hidden_layers):
        for i, h in enumerate(t.heads):
            np.testing.assert_allclose(t.maps[l, i], out.attentions[l][0, h].numpy(), atol=1e-5)


def test_trace_refuses_bad_heads(tiny_qwen2):
    llm = awqinfer.load(tiny_qwen2)
    for heads in ([], [4], [-1], [0, 0], ["0"], [True]):
        with pytest.raises(awqinfer.InputError, match="heads"):
            trace(llm, {"prompt": "Hi", "max_tokens": 1}, heads=heads)
    with pytest.raises(awqinfer.InputError, match="top_k"):
        trace(llm, {"prompt": "Hi", "top_k": 0})


def test_trace_command_prints_every_step_and_agrees_with_run(tiny_qwen2, tmp_path):
    flags = ["--model", tiny_qwen2, "--max-tokens", 4, "--seed", 3, "--temperature", 0.8]
    proc = cli("trace", *flags, "--html", tmp_path / "page.html", "Hello, world")
    assert proc.returncode == 0, proc.stderr
    run = cli("run", *flags, "--json", "Hello, world")
    assert run.returncode == 0, run.stderr
    response = json.loads(run.stdout)["response"]
    out = proc.stdout
    assert f"response: {response!r}" in out
    assert "chat template output:" in out and "<|im_start|>user" in out
    n_steps = len(re.findall(r"^== step \d+: (prefill|decode)", out, re.M))
    assert n_steps >= 1 and out.count("\ndrawn: ") == n_steps
    tables = re.findall(r"^ +(\d+) +[\d.]+ +[\d.]+ +[\d.]+ ", out, re.M)
    assert tables == ["0", "1"] * n_steps  # the tiny model's two layers, in every step
    for name in STEP_NAMES:
        assert out.count(f"\n  {name}") == n_steps
    assert (tmp_path / "page.html").is_file()


def test_trace_command_errors_are_one_line(tiny_qwen2, tmp_path):
    for flags, code, needle in ((["--heads", "9"], 2, "heads"), (["--heads", "a,b"], 2, "--heads"),
                                (["--html", tmp_path / "missing" / "x.html"], 2, "--html"),
                                (["--max-tokens", "0"], 2, "--max-tokens")):
        proc = cli("trace", "--model", tiny_qwen2, *flags, "Hi")
        assert proc.returncode == code, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    proc = cli("trace", "--model", tiny_qwen2)  # neither PROMPT nor --inputs
    assert proc.returncode == 2 and "PROMPT" in proc.stderr and "Traceback" not in proc.stderr


def test_trace_command_takes_inputs_as_run_does(tiny_qwen2, tmp_path):
    """--inputs FILE: a conversation, its max_tokens kept (not the trace's default of 16)."""
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Hello"}],
                                  "max_tokens": 2, "seed": 7, "temperature": 1.0}))
    proc = cli("trace", "--model", tiny_qwen2, "--inputs", inputs)
    assert proc.returncode == 0, proc.stderr
    run = cli("run", "--model", tiny_qwen2, "--inputs", inputs, "--json")
    assert f"response: {json.loads(run.stdout)['response']!r}" in proc.stdout
    assert "Be brief." in proc.stdout and "sampling: max_tokens 2," in proc.stdout


class _Resources(HTMLParser):
    """Every attribute of the page that could fetch something."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        self.found += [(tag, name, value) for name, value in attrs if name in ("src", "href", "srcset", "data")]


def chromium():
    """A headless Chromium through chromedriver, collecting the console; skipped where neither is installed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("headless Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = Options()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='awqinfer-chromium-')}", "--window-size=1200,900"):
        options.add_argument(flag)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_html_page_opens_in_chromium_without_errors(tiny_llama_awq, tmp_path):
    from awqinfer.cli.trace_html import write_page
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    llm = awqinfer.load(tiny_llama_awq)
    t = trace(llm, {"prompt": "A story about </script> & <b>tags</b>", "max_tokens": 5, "seed": 2})
    path = tmp_path / "trace.html"
    write_page(t, path)
    html = path.read_text(encoding="utf-8")
    parser = _Resources()
    parser.feed(html)
    assert parser.found == []  # self-contained: nothing to fetch
    assert "<b>tags</b>" not in html  # the prompt is text, not markup

    browser = chromium()
    try:
        browser.get(path.as_uri())
        assert browser.execute_script("return document.body.dataset.rendered") == "yes"
        assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
        steps = browser.find_elements(By.CSS_SELECTOR, "details > summary")
        assert sum(s.text.startswith("Step ") for s in steps) == len(t.steps)
        Select(browser.find_element(By.ID, "map-layer")).select_by_index(1)
        Select(browser.find_element(By.ID, "map-head")).select_by_index(1)
        n = t.maps.shape[2]
        # the canvas shows layer 1, head heads[1]: its darkest cell on each row is the strongest position
        darkest = browser.execute_script("""
            const c = document.getElementById('map'), ctx = c.getContext('2d'), cell = c.width / arguments[0];
            const rows = [];
            for (let q = 0; q < arguments[0]; q++) {
              let best = -1, shade = 256;
              for (let k = 0; k <= q; k++) {
                const v = ctx.getImageData(k * cell + cell / 2, q * cell + cell / 2, 1, 1).data[0];
                if (v < shade) { shade = v; best = k; }
              }
              rows.push(best);
            }
            return rows;""", n)
        expected = [int(np.argmax(np.round(np.sqrt(t.maps[1, 1, q, :q + 1]) * 255))) for q in range(n)]
        assert darkest == expected
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    finally:
        browser.quit()


@pytest.mark.skipif(not HAS_NUMBA_CUDA, reason=NO_NUMBA_CUDA)
def test_trace_on_the_simulated_device(tmp_path):
    """The trace observes device arrays too (tests/cuda_sim/sim_trace.py, in a child under the simulator)."""
    totals = child_pytest(["sim_trace.py"], tmp_path / "sim.xml", simulate=True)
    assert totals["tests"] == 1 and totals["failures"] == totals["errors"] == totals["skipped"] == 0, totals["output"]


def test_an_observed_token_leaves_what_an_unobserved_one_leaves(tiny_qwen2_awq):
    """Model.forward with an observer: the compiled step's logits and cache contents, as without one."""
    model = awqinfer.load(tiny_qwen2_awq).model
    seen = []
    caches = [model.new_cache(8), model.new_cache(8)]
    try:
        for cache in caches:
            model.forward([5, 9, 11], cache)
        plain = model.forward([7], caches[0])
        observed = model.forward([7], caches[1], observe=lambda l, name, value: seen.append((l, name)))
        assert [cache.pos for cache in caches] == [4, 4]
        np.testing.assert_array_equal(observed, plain)
        np.testing.assert_array_equal(caches[1].k[:, :, :4], caches[0].k[:, :, :4])
        np.testing.assert_array_equal(caches[1].v[:, :, :4], caches[0].v[:, :, :4])
        assert seen[-2:] == [(None, "lm_head"), (None, "compiled_step")]
        assert {l for l, _ in seen[:-2]} == set(range(model.config.num_hidden_layers))
    finally:
        for cache in caches:
            cache.close()


def test_a_greedy_trace_shows_the_greedy_step(tiny_qwen2):
    llm = awqinfer.load(tiny_qwen2)
    inputs = {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
    t = trace(llm, inputs)
    assert t.response == llm.run(inputs)["response"]
    for step in t.steps:
        assert [s.name for s in step.sampling] == ["logits", "repetition_penalty", "frequency_presence_penalty",
                                                  "greedy"]
        assert [s.active for s in step.sampling] == [True, False, False, True]
        assert step.token_prob == 1.0 and step.sampling[-1].top[0].token == step.token
