"""``awqinfer trace --html FILE``: the trace as one self-contained HTML page.

The page holds the same data as the text report (cli/trace.py), as tables, with small
inline charts: an SVG line of the residual stream's norm across the layers of each step,
CSS bars of the sampler's probabilities after each of its steps, and a canvas that draws
the attention map of one head of one layer (chosen from two menus; a few lines of inline
JavaScript read the maps from a JSON block in the page). Nothing is fetched: no external
script, style sheet, font or image, so the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path

import numpy as np

from ..engine.trace import Step, Trace

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; } h3 { font-size: 1em; }
pre { background: #f4f4f4; padding: .6em; overflow-x: auto; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: right; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
code, .piece { font-family: ui-monospace, monospace; white-space: pre; }
summary { cursor: pointer; font-weight: 600; margin: .6em 0; }
.bar { display: inline-block; height: .8em; background: #4a7bd0; vertical-align: middle; }
.off { color: #888; }
.stages { display: flex; flex-wrap: wrap; gap: 1.2em; }
.stages table { margin: 0; }
canvas { border: 1px solid #ccc; image-rendering: pixelated; }
svg text { font-size: 10px; fill: #555; }
"""

SCRIPT = """
"use strict";
const data = JSON.parse(document.getElementById("trace-data").textContent);
const bytes = Uint8Array.from(atob(data.maps), c => c.charCodeAt(0));
const n = data.positions.length, layerMenu = document.getElementById("map-layer");
const headMenu = document.getElementById("map-head"), canvas = document.getElementById("map");
const hover = document.getElementById("map-hover"), cell = Math.max(2, Math.floor(480 / Math.max(n, 1)));
data.layers.forEach((l) => layerMenu.add(new Option("layer " + l, l)));
data.heads.forEach((h, i) => headMenu.add(new Option("head " + h, i)));
canvas.width = canvas.height = n * cell;
function value(layer, head, q, k) {  // stored as round(255 * sqrt(probability))
  return bytes[((layer * data.heads.length + head) * n + q) * n + k];
}
function draw() {
  const ctx = canvas.getContext("2d"), layer = +layerMenu.value, head = +headMenu.value;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let q = 0; q < n; q++) {
    for (let k = 0; k <= q; k++) {
      const shade = 255 - value(layer, head, q, k);
      ctx.fillStyle = "rgb(" + shade + "," + shade + ",255)";
      ctx.fillRect(k * cell, q * cell, cell, cell);
    }
  }
}
canvas.addEventListener("mousemove", (e) => {
  const box = canvas.getBoundingClientRect();
  const k = Math.floor((e.clientX - box.left) / cell), q = Math.floor((e.clientY - box.top) / cell);
  if (q < 0 || q >= n || k < 0 || k > q) { hover.textContent = ""; return; }
  const p = (value(+layerMenu.value, +headMenu.value, q, k) / 255) ** 2;
  hover.textContent = "position " + q + " " + data.positions[q] + " attends to position " + k + " " +
    data.positions[k] + ": probability about " + p.toFixed(3);
});
layerMenu.addEventListener("change", draw);
headMenu.addEventListener("change", draw);
draw();
document.body.dataset.rendered = "yes";
"""


def write_page(t: Trace, path: str | Path) -> None:
    """Write ``t`` as an HTML page to ``path`` (UTF-8)."""
    Path(path).write_text(page(t), encoding="utf-8")


def page(t: Trace) -> str:
    """The whole page as a string."""
    c = t.config
    title = f"awqinfer trace: {t.model}"
    body = [f"<h1>{escape(title)}</h1>",
            f"<p>{escape(c.architecture)}, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"{c.num_attention_heads} query heads / {c.num_key_value_heads} KV heads of {c.head_dim}, vocabulary "
            f"{c.vocab_size}. Sampling: {escape(', '.join(f'{k} {v}' for k, v in vars(t.params).items()))}. "
            f"KV cache: {t.kv_dtype}, {t.steps[0].kv.bytes_per_position:,} bytes per position.</p>",
            weights_table(t), prompt_section(t), attention_section(t), "<h2>Steps</h2>"]
    body += [step_section(t, n, step) for n, step in enumerate(t.steps, start=1)]
    body.append(f"<h2>Response</h2><pre>{escape(t.response)}</pre><p>finish reason: {escape(str(t.finish_reason))}</p>")
    data = json.dumps(page_data(t), ensure_ascii=True).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) +
            f"\n<script id=\"trace-data\" type=\"application/json\">{data}</script>\n<script>{SCRIPT}</script>\n"
            "</body></html>\n")


def page_data(t: Trace) -> dict:
    """What the script reads: the attention maps (uint8, sqrt scale, base64), heads, layers, position labels."""
    n = t.maps.shape[2]
    sequence = t.sequence
    coded = np.rint(np.sqrt(np.clip(t.maps, 0, 1)) * 255).astype(np.uint8)
    return {"maps": base64.b64encode(coded.tobytes()).decode("ascii"), "heads": list(t.heads),
            "layers": list(range(t.maps.shape[0])), "positions": [repr(t.piece(i)) for i in sequence[:n]]}


def weights_table(t: Trace) -> str:
    rows = "".join(f"<tr><td class=l>{escape(w.name)}</td><td class=l>{escape(w.format)}</td>"
                   f"<td>{w.nbytes:,}</td></tr>" for w in t.weights)
    return ("<details><summary>Weights each forward reads</summary><table><tr><th class=l>part</th>"
            f"<th class=l>format</th><th>bytes</th></tr>{rows}</table></details>")


def prompt_section(t: Trace) -> str:
    template = ("<h3>The chat template's output</h3><pre>" + escape(t.template) + "</pre>"
                if t.template is not None else "<p>Raw prompt: no chat template.</p>")
    rows = "".join(f"<tr><td>{i}</td><td>{token}</td><td class=l><span class=piece>{escape(repr(t.piece(token)))}"
                   "</span></td></tr>" for i, token in enumerate(t.prompt_ids))
    return (f"<h2>Prompt</h2>{template}<details><summary>{len(t.prompt_ids)} tokens</summary><table>"
            f"<tr><th>position</th><th>id</th><th class=l>piece</th></tr>{rows}</table></details>")


def attention_section(t: Trace) -> str:
    n = t.maps.shape[2]
    return ("<h2>Attention map</h2><p>Row: the query position; column: the position it attends to; darker is "
            f"more probable (square-root scale). The first {n} positions of the sequence.</p>"
            "<p><label>Layer <select id=map-layer></select></label> <label>Head <select id=map-head></select>"
            "</label></p><canvas id=map width=1 height=1></canvas><p id=map-hover class=piece></p>")


def step_section(t: Trace, n: int, step: Step) -> str:
    """One forward: the norm chart, the layer table, the sampler's bars, the token drawn, the KV cache."""
    end = step.start + len(step.ids) - 1
    if step.kind == "prefill":
        title = f"Step {n}: prefill, positions {step.start}..{end}"
    else:
        title = f"Step {n}: decode, position {step.start} {t.piece(step.ids[0])!r}"
    if step.token is not None:
        title += f" -> {t.piece(step.token)!r}"
    kv_layer = step.kv.positions * step.kv.bytes_per_position // t.config.num_hidden_layers
    sequence, rows = t.sequence, []
    for layer, w in zip(step.layers, t.weights):
        heads = "<br>".join(f"h{h}: " + ", ".join(f"{pos} <span class=piece>{escape(repr(t.piece(sequence[pos])))}"
                                                   f"</span> {prob:.2f}" for pos, prob in top)
                            for h, top in layer.attention.items())
        rows.append(f"<tr><td>{layer.index}</td><td>{layer.norm_in:.2f}</td><td>{layer.norm_mid:.2f}</td>"
                    f"<td>{layer.norm_out:.2f}</td><td>{layer.seconds * 1e3:.2f}</td><td class=l>{escape(w.format)}"
                    f"</td><td>{w.nbytes:,}</td><td>{kv_layer:,}</td><td class=l>{heads}</td></tr>")
    parts = [f"<details{' open' if n == 1 else ''}><summary>{escape(title)}</summary>", norm_chart(step),
             "<table><tr><th>layer</th><th>|x| in</th><th>|x| after attention</th><th>|x| after MLP</th>"
             "<th>ms</th><th class=l>weights</th><th>weight bytes</th><th>KV bytes</th>"
             f"<th class=l>strongest attention of position {end}</th></tr>" + "".join(rows) + "</table>"]
    if not step.sampling:
        parts.append("<p>A prompt chunk before the last: its logits are not sampled.</p>")
    else:
        parts.append(f"<p>Final norm and lm_head: {step.head_seconds * 1e3:.2f} ms; the readable forward: "
                     f"{step.seconds * 1e3:.2f} ms; {escape(step.compiled_note)}.</p>" + sampling_bars(t, step) +
                     f"<p>Drawn: {step.token} <span class=piece>{escape(repr(t.piece(step.token)))}</span> "
                     f"(probability {step.token_prob:.3f}, rank {step.token_rank}); text out: "
                     f"<span class=piece>{escape(repr(step.text))}</span>"
                     f"{'; finish: ' + escape(step.finish_reason) if step.finish_reason else ''}.</p>")
    kv = step.kv
    parts.append(f"<p>KV cache: {kv.positions}/{kv.capacity} positions filled, {kv.allocated} allocated "
                 f"({kv.nbytes:,} bytes), {kv.reserved:,} bytes reserved in the KV budget.</p></details>")
    return "\n".join(parts)


def sampling_bars(t: Trace, step: Step) -> str:
    """One small table of probability bars per sampling step."""
    tables = []
    for s in step.sampling:
        name = escape(f"{s.name} ({s.setting})" if s.setting else s.name)
        if not s.active:
            tables.append(f"<table><tr><th class=l>{name}</th></tr><tr><td class='l off'>off</td></tr></table>")
            continue
        rows = "".join(f"<tr><td class=l><span class=piece>{escape(repr(t.piece(c.token)))}</span></td>"
                       f"<td class=l><span class=bar style='width:{100 * c.prob:.1f}px'></span></td>"
                       f"<td>{c.prob:.3f}</td></tr>" for c in s.top)
        tables.append(f"<table><tr><th class=l colspan=3>{name}: {s.kept:,} kept</th></tr>{rows}</table>")
    return "<div class=stages>" + "".join(tables) + "</div>"


def norm_chart(step: Step, width: int = 640, height: int = 150) -> str:
    """An SVG line of |x| through the layers (entering, after attention, after the MLP), log scale."""
    points = [(l.index + f, v) for l in step.layers for f, v in ((0, l.norm_in), (0.5, l.norm_mid), (1, l.norm_out))]
    values = [max(v, 1e-6) for _, v in points]
    lo, hi = math.log10(min(values)), math.log10(max(values))
    span, last = max(hi - lo, 1e-6), max(len(step.layers), 1)
    x = lambda layer: 40 + (width - 50) * layer / last
    y = lambda v: height - 20 - (height - 30) * (math.log10(max(v, 1e-6)) - lo) / span
    line = " ".join(f"{x(a):.1f},{y(v):.1f}" for a, v in points)
    ticks = "".join(f"<text x=2 y={y(10 ** e) + 3:.1f}>{10 ** e:g}</text>"
                    for e in range(math.floor(lo), math.ceil(hi) + 1) if lo <= e <= hi)
    return (f"<svg width={width} height={height} role=img aria-label='residual norm across layers'>"
            f"<polyline points='{line}' fill=none stroke='#4a7bd0' stroke-width=1.5 />"
            f"<text x=40 y={height - 4}>layer 0</text><text x={width - 60} y={height - 4}>layer {last - 1}</text>"
            f"<text x={width / 2 - 80:.0f} y=10>|x| of the residual stream (log scale)</text>{ticks}</svg>")
