"""``awqinfer convert GGUF OUT``: a Llama GGUF file -> a Hugging Face checkpoint directory."""

from __future__ import annotations

import sys
from pathlib import Path

from ..engine import hub
from ..engine.checkpoint.gguf import convert_gguf
from ..engine.quant.quantize import METHODS
from .common import EXIT_USAGE, fail, ranged


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a GGUF file to a Hugging Face checkpoint",
                              description="Convert a Llama GGUF file to a Hugging Face directory (float32 "
                                          "safetensors, tokenizer.json, chat template); with --awq, "
                                          "quantize it to AWQ 4-bit as well.")
    p.add_argument("gguf", metavar="GGUF", help="the .gguf file")
    p.add_argument("out", metavar="OUT", help="the directory to write (must not exist or be empty)")
    p.add_argument("--awq", action="store_true", help="write an AWQ 4-bit checkpoint instead of float32")
    p.add_argument("--method", choices=list(METHODS), default=hub.DEFAULT_METHOD,
                   help=f"the quantizer with --awq (default {hub.DEFAULT_METHOD})")
    p.add_argument("--group-size", type=ranged(int, 8, None), default=hub.DEFAULT_GROUP_SIZE,
                   help=f"AWQ group size (default {hub.DEFAULT_GROUP_SIZE})")
    p.add_argument("--samples", type=ranged(int, 1, None), default=hub.DEFAULT_SAMPLES,
                   help=f"calibration windows (default {hub.DEFAULT_SAMPLES}, as the default model)")
    p.add_argument("--seq-len", type=ranged(int, 1, None), default=hub.DEFAULT_SEQ_LEN,
                   help=f"tokens per calibration window (default {hub.DEFAULT_SEQ_LEN})")


def main(args) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return fail(f"{out} already exists and is not an empty directory", EXIT_USAGE)
    if not args.awq:
        convert_gguf(args.gguf, out, progress=True)
    else:
        hub.build_from_gguf(args.gguf, out, method=args.method, group_size=args.group_size, samples=args.samples,
                            seq_len=args.seq_len, progress=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0
