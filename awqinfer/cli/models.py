"""``awqinfer models``: the model names awqinfer knows, and which are already on this machine."""

from __future__ import annotations

import json

from ..engine.hub import cache_dir, known_models


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the known model names and which are cached",
                              description="List the model names awqinfer knows and whether each is on this "
                                          "machine. Any local checkpoint directory or Hugging Face repo id "
                                          "works as --model too.")
    p.add_argument("--json", action="store_true", help="print the list as JSON")


def main(args) -> int:
    rows = known_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "cached " if r["cached"] else "       "
        default = " (default)" if r["default"] else ""
        print(f"{r['name']:<{width}}  {mark} {r['weights']}  <- {r['source']}{default}")
    print(f"\ndefault model cache: {cache_dir()} (set AWQINFER_CACHE to move it)")
    return 0
