"""``awqinfer quantize SRC OUT``: a float Llama/Qwen2 checkpoint -> an AWQ 4-bit checkpoint (AutoAWQ's layout)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..engine.quant.quantize import DEFAULT_METHOD, METHODS, quantize
from .common import EXIT_USAGE, fail, ranged


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize", help="quantize a float checkpoint to AWQ 4-bit",
        description="Quantize a float16/bfloat16/float32 Llama or Qwen2 Hugging Face checkpoint to AWQ 4-bit "
                    "(AutoAWQ's 'gemm' layout, loadable by awqinfer, transformers, vLLM and AutoAWQ). "
                    "The calibrated methods run text through the model layer by layer (built in: prose, code and "
                    "chat made from Python's standard library); rtn rounds plainly. Each layer's time and the "
                    "peak memory so far are printed as it is done.")
    p.add_argument("src", metavar="SRC", help="the float checkpoint directory (config.json + safetensors)")
    p.add_argument("out", metavar="OUT", help="the directory to write (must not exist or be empty)")
    p.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD,
                   help=f"awq-gptq: AWQ's scales and clipping, then GPTQ's error feedback in act order; awq: AWQ "
                        f"rounded to nearest (AutoAWQ's method); gptq: GPTQ alone; rtn: plain rounding "
                        f"(default {DEFAULT_METHOD})")
    p.add_argument("--group-size", type=ranged(int, 8, None), default=128,
                   help="inputs sharing one scale and zero (default 128)")
    p.add_argument("--calib", metavar="FILE", default=None,
                   help="UTF-8 calibration text for awq (default: the built-in standard-library text)")
    p.add_argument("--samples", type=ranged(int, 1, None), default=128, metavar="N",
                   help="calibration windows (default 128)")
    p.add_argument("--seq-len", type=ranged(int, 1, None), default=512, metavar="L",
                   help="tokens per calibration window (default 512)")


def main(args) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return fail(f"{out} already exists and is not an empty directory", EXIT_USAGE)
    quantize(args.src, out, method=args.method, group_size=args.group_size, calib=args.calib,
             samples=args.samples, seq_len=args.seq_len, progress=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0
