"""``awqinfer eval perplexity MODEL FILE``: how well a model (a quantized one, say) predicts a text of yours."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import awqinfer
from tqdm.auto import tqdm

from ..engine.quant.perplexity import DEFAULT_WINDOW, text_perplexity
from .common import Parser, ranged


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="measure a model's quality on your own text",
                              description="Measure a model on a text: `awqinfer eval perplexity MODEL FILE`.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", parser_class=Parser)
    tasks.required = True
    t = tasks.add_parser(
        "perplexity", help="perplexity of MODEL on the text in FILE",
        description="Perplexity of MODEL on FILE (UTF-8 text; special tokens written in it, such as a chat "
                    "template's, are read as special tokens), scored by strided windows as Hugging Face "
                    "documents it: windows of --window tokens start every --stride tokens, each scoring "
                    "only the tokens no earlier window scored. Lower is better; compare models on the same "
                    "FILE, --window and --stride.")
    t.add_argument("model", metavar="MODEL",
                   help="a checkpoint directory, Hugging Face repo id, Workers AI name, or 'smollm2-135m-instruct' "
                        "(the default model)")
    t.add_argument("file", metavar="FILE", help="the UTF-8 text to score ('-' reads stdin)")
    t.add_argument("--max-tokens", type=ranged(int, 2, None), default=None, metavar="N",
                   help="score only the first N tokens of the text (default: all)")
    t.add_argument("--window", type=ranged(int, 2, None), default=None, metavar="W",
                   help=f"tokens per forward pass (default {DEFAULT_WINDOW}, or the model's context if shorter)")
    t.add_argument("--stride", type=ranged(int, 1, None), default=None, metavar="S",
                   help="tokens between window starts; each scored token sees at least W - S tokens of "
                        "context after the first window (default: W / 2)")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    t.add_argument("--threads", type=ranged(int, 1, None), default=None, metavar="N",
                   help="CPU threads for the kernels (default: the cores this process may use)")
    t.add_argument("--json", action="store_true", help="print the result as one JSON object")


def main(args) -> int:
    if args.file == "-":
        text = sys.stdin.read()
    else:
        path = Path(args.file)
        if not path.is_file():
            raise awqinfer.InputError(f"text file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise awqinfer.InputError(f"text file {path} is not UTF-8 text ({e})") from None
    llm = awqinfer.load(args.model, device=args.device, threads=args.threads)
    started = time.perf_counter()
    with tqdm(desc="perplexity", unit="token", disable=args.json or not sys.stderr.isatty()) as bar:
        result = text_perplexity(llm.model, llm.tokenizer, text, args.max_tokens, args.window, args.stride,
                                 progress=bar.update)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({"model": args.model, "file": args.file, **result.to_dict(), "seconds": round(seconds, 2)}))
    else:
        print(f"perplexity {result.perplexity:.4f} over {result.tokens} tokens of {args.file} "
              f"({result.windows} windows of {result.window} tokens every {result.stride}; {seconds:.1f} s)")
    return 0
