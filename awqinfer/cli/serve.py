"""``awqinfer serve``: the Workers AI REST API and an OpenAI-compatible API over HTTP, with a playground.

    awqinfer serve                                   the default model on http://127.0.0.1:8787
    awqinfer serve --model @cf/qwen/qwen1.5-7b-chat-awq --api-key KEY --port 8080

Port 8787 is the one ``wrangler dev`` uses, so the seed documents' examples work against
``http://127.0.0.1:8787`` unchanged. Only this machine can connect unless --host says otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import sys

import awqinfer
from awqinfer.engine.text.schema import FIELDS

from . import serve_ray
from .common import EXIT_ERROR, EXIT_USAGE, add_load_flags, fail, ranged

KEY_ENV = "AWQINFER_API_KEY"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve models over HTTP (Workers AI and OpenAI APIs, a playground page)",
        description="Serve models over HTTP: POST /ai/run/{model} (and /client/v4/accounts/{id}/ai/run/{model}) "
                    "as Workers AI's REST API, /v1/chat/completions, /v1/completions and /v1/models as OpenAI's, "
                    "a playground page at /, /health and /metrics.")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=ranged(int, 0, 65535), default=8787,
                   help="the port (default: 8787, as `wrangler dev`; 0: any free port, printed at start)")
    p.add_argument("--model", "-m", action="append", default=None, metavar="NAME",
                   help="a model to load at start and keep loaded (repeat for several; downloaded if needed; "
                        "default: the embedded SmolLM2-135M-Instruct). Requests may name any other model on "
                        "this machine: it loads on first use")
    add_load_flags(p, batching=True)
    p.add_argument("--lora-dir", metavar="DIR", default=None,
                   help="a folder of PEFT LoRA adapters, one per subfolder, named by it, loaded onto every model; "
                        "a request picks one with the Workers AI 'lora' field")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on every route but /health (default: ${KEY_ENV}, "
                        "else no key)")
    p.add_argument("--keep-models", type=ranged(int, 0, None), default=2, metavar="N",
                   help="models loaded on first use that stay loaded, most recent first (default: 2)")
    p.add_argument("--shutdown-timeout", type=ranged(float, 0, None), default=5.0, metavar="SECONDS",
                   help="on SIGTERM, how long running generations may finish before they are stopped (default: 5)")
    seed = FIELDS["seed"]
    p.add_argument("--seed", type=ranged(int, seed.low, seed.high), default=None, metavar="N",
                   help="the seed of every request that sets none, so that the same request gives the same text "
                        "(as llama-server's --seed; default: a new seed for each such request)")
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    serve_ray.add_ray_flags(p)  # --ray, --replicas, --autoscale, --address, ... (issue 18)


def main(args) -> int:
    # imported here, not at the top: the other subcommands start without loading the web stack
    from ..server import Models, create_app
    from ..server.models import ModelError
    from ..server.run import listen, serve

    key = args.api_key if args.api_key is not None else os.environ.get(KEY_ENV) or None
    if key is not None and not key.strip():
        return fail("--api-key: got an empty key", EXIT_USAGE)
    if serve_ray.wanted(args):  # Ray Serve replicas serve instead of this process (issue 18)
        return serve_ray.main(args, key)
    try:
        sock = listen(args.host, args.port)  # first, so a taken port is an error before a long load
    except OSError as e:
        return fail(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")
    with sock:
        if args.kv_budget is not None:
            awqinfer.set_kv_budget(args.kv_budget)
        models = Models(args.device, args.threads, args.keep_models, args.max_batch, args.max_queue, args.lora_dir)
        for name in args.model or [None]:
            try:
                models.preload(name)
            except ModelError as e:
                return fail(str(e), EXIT_ERROR)
        if key is None and not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
            print(f"awqinfer: warning: listening on {args.host} without --api-key: anyone who can reach this "
                  "machine can use the models", file=sys.stderr)
        app = create_app(models, api_key=key, seed=args.seed)
        serve(app, sock, shutdown_timeout=args.shutdown_timeout, access_log=not args.no_access_log)
    return 0
