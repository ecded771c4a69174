"""``awqinfer trace [--model M] [--max-tokens N] [--html FILE] PROMPT``: one generation, shown step by step.

Runs PROMPT through the readable forward (engine/trace.py) and prints, for the prompt and
each generated token: the tokenization and the chat template's output; per layer the
residual stream's norm entering, after attention and after the MLP, the strongest
attention positions of a few heads, the time and the bytes read; the sampler's top
candidates after each of its steps and the token drawn; the KV cache's fill. ``--html``
also writes the same data as one self-contained page (cli/trace_html.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine.trace import Step, Trace, trace
from .common import EXIT_USAGE, add_model_flags, add_sampling_flags, fail, load_model
from .run import build_inputs
from .trace_html import write_page

MAX_TOKENS = 16  # the trace's default: every token prints a table of every layer
HEAD_POSITIONS = 3  # strongest positions printed per head


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("trace", help="show one generation step by step, through every layer",
                              description="Generate a response to PROMPT through the readable forward pass "
                                          "and show what happens to each token: tokenization, every layer, "
                                          f"every sampling step, the KV cache. --max-tokens defaults to "
                                          f"{MAX_TOKENS} here.")
    p.add_argument("prompt", metavar="PROMPT", nargs="?", help="the prompt; '-' reads it from stdin")
    p.add_argument("--inputs", metavar="FILE", default=None,
                   help="Workers AI inputs as a JSON object (as run takes them) instead of PROMPT")
    add_model_flags(p)
    add_sampling_flags(p)
    # run's --truncate, JSON and tools flags: a trace never drops turns and samples free text
    p.set_defaults(truncate=False, tools=None, json_schema=None, json_object=False, tool_choice=None)
    p.add_argument("--raw", action="store_true", help="send PROMPT as is, without the chat template")
    p.add_argument("--heads", type=heads_list, default=None, metavar="LIST",
                   help="query heads whose attention is shown, e.g. 0,3,6 (default: the first head of each "
                        "KV head, at most 4)")
    p.add_argument("--html", metavar="FILE", default=None, help="also write the trace as a self-contained HTML page")


def heads_list(text: str) -> list[int]:
    """--heads: comma-separated integers (their range is checked against the model by engine/trace.py)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated head numbers such as 0,3,6, got {text!r}")


def main(args) -> int:
    try:
        inputs = build_inputs(args)
    except ValueError as e:
        return fail(str(e), EXIT_USAGE)
    inputs.setdefault("max_tokens", MAX_TOKENS)  # unless the flag or --inputs gives it
    if args.html and not Path(args.html).resolve().parent.is_dir():
        return fail(f"--html: no such directory for {args.html}", EXIT_USAGE)
    llm = load_model(args)
    result = trace(llm, inputs, heads=args.heads)
    print_trace(result)
    if args.html:
        write_page(result, args.html)
        print(f"\nwrote {args.html}")
    return 0


def print_trace(t: Trace, out=None) -> None:
    """The whole trace as text on ``out`` (default stdout)."""
    out = out or sys.stdout
    for line in report(t):
        print(line, file=out)


def report(t: Trace) -> list[str]:
    """The trace's text report, line by line."""
    c, p = t.config, t.params
    lines = [f"model {t.model}: {c.architecture}, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
             f"{c.num_attention_heads} query heads / {c.num_key_value_heads} KV heads of {c.head_dim}, "
             f"vocabulary {c.vocab_size}",
             "sampling: " + ", ".join(f"{k} {v if v is not None else 'off'}" for k, v in vars(p).items()),
             "weights each forward reads: " + "; ".join(weight_groups(t)),
             f"KV cache: {t.kv_dtype}, {t.steps[0].kv.bytes_per_position:,} bytes per position", ""]
    if t.template is not None:
        lines += ["chat template output:"] + ["  | " + line for line in t.template.split("\n")]
    else:
        lines.append("raw prompt: no chat template")
    lines.append(f"prompt: {len(t.prompt_ids)} tokens (position:id piece)")
    lines += wrap([f"{i}:{token} {piece(t, token)}" for i, token in enumerate(t.prompt_ids)])
    for n, step in enumerate(t.steps, start=1):
        lines += [""] + step_report(t, n, step)
    lines += ["", f"response: {t.response!r}", f"finish reason: {t.finish_reason}, "
              f"{sum(s.token is not None for s in t.steps)} tokens generated"]
    return lines


def step_report(t: Trace, n: int, step: Step) -> list[str]:
    """One forward: its layer table, the lm_head, the sampler's steps, the token drawn and the KV cache."""
    end = step.start + len(step.ids) - 1
    if step.kind == "prefill":
        title = f"step {n}: prefill, positions {step.start}..{end} ({len(step.ids)} tokens)"
    else:
        title = f"step {n}: decode, position {step.start}: {piece(t, step.ids[0])}"
    kv_layer = step.kv.positions * step.kv.bytes_per_position // t.config.num_hidden_layers
    lines = [f"== {title} ==",
             f"layer   |x| in  |x| attn   |x| out       ms  read KB  attention of position {end}: "
             f"head: position:probability"]
    for layer, weights in zip(step.layers, t.weights):
        heads = "  ".join(f"h{h} " + " ".join(f"{pos}:{prob:.2f}" for pos, prob in top[:HEAD_POSITIONS])
                          for h, top in layer.attention.items())
        lines.append(f"{layer.index:5d} {layer.norm_in:9.2f} {layer.norm_mid:9.2f} {layer.norm_out:9.2f} "
                     f"{layer.seconds * 1e3:8.2f} {(weights.nbytes + kv_layer) / 1e3:8.0f}  {heads}")
    layer_seconds = sum(layer.seconds for layer in step.layers)
    head = t.weights[-1]
    lines.append(f"layers {layer_seconds * 1e3:.2f} ms; KV read by attention {kv_layer * len(step.layers) / 1e3:.0f} KB"
                 f" ({step.kv.positions} positions)")
    if not step.sampling:
        lines.append(f"prompt chunk: its logits are not sampled; KV cache {kv_line(step)}")
        return lines
    lines.append(f"final norm + lm_head {step.head_seconds * 1e3:.2f} ms reading {head.nbytes / 1e6:.1f} MB; "
                 f"readable forward {step.seconds * 1e3:.2f} ms; {step.compiled_note}")
    lines.append(f"sampling the token at position {end + 1} (probability after each step, top {len(step.sampling[0].top)}):")
    for s in step.sampling:
        name = f"{s.name} ({s.setting})" if s.setting else s.name
        if not s.active:
            lines.append(f"  {name:<52} off")
            continue
        top = "  ".join(f"{piece(t, c.token)} {c.prob:.3f}" for c in s.top)
        lines.append(f"  {name:<52} {s.kept:>6} kept  {top}")
    lines.append(f"drawn: {step.token} {piece(t, step.token)} (probability {step.token_prob:.3f}, rank "
                 f"{step.token_rank}); text out: {step.text!r}" +
                 (f"; finish: {step.finish_reason}" if step.finish_reason else ""))
    lines.append(f"KV cache {kv_line(step)}")
    return lines


def kv_line(step: Step) -> str:
    kv = step.kv
    return (f"{kv.positions}/{kv.capacity} positions filled, {kv.allocated} allocated "
            f"({kv.nbytes / 1e6:.2f} MB), {kv.reserved / 1e6:.2f} MB reserved in the KV budget")


def weight_groups(t: Trace) -> list[str]:
    """Runs of layers with the same format and size, then the lm_head: 'layers 0-29: AWQ ... (2.2 MB each)'."""
    groups: list[list] = []  # [first, last, format, nbytes]
    for l, w in enumerate(t.weights[:-1]):
        if groups and groups[-1][2:] == [w.format, w.nbytes]:
            groups[-1][1] = l
        else:
            groups.append([l, l, w.format, w.nbytes])
    head = t.weights[-1]
    return [f"layers {a}-{b}: {f} ({n / 1e6:.2f} MB each)" if a != b else f"layer {a}: {f} ({n / 1e6:.2f} MB)"
            for a, b, f, n in groups] + [f"lm_head: {head.format} ({head.nbytes / 1e6:.1f} MB)"]


def piece(t: Trace, token: int) -> str:
    """A token's vocabulary piece, quoted so that spaces and control characters show."""
    return repr(t.piece(token))


def wrap(items: list[str], width: int = 100) -> list[str]:
    """Items joined by two spaces into indented lines of at most ``width`` characters."""
    lines, line = [], ""
    for item in items:
        if line and len(line) + 2 + len(item) > width:
            lines.append(line)
            line = ""
        line = f"{line}  {item}" if line else f"  {item}"
    return lines + ([line] if line else [])
