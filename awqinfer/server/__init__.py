"""``awqinfer serve``: the Workers AI REST API and an OpenAI-compatible API over HTTP, with a playground.

The modules, in the order a request meets them:

    run.py            the listening socket, uvicorn, and a clean shutdown on SIGTERM
    app.py            create_app: routes, the API-key middleware, errors, /health, /metrics, the page
    web.py            HTTP plumbing both APIs share: error shapes, the body, the key, SSE, disconnects
    workers_ai.py     POST /ai/run/{model} (and under /client/v4/accounts/{id}/): the seed examples
    openai_params.py  OpenAI parameters -> Workers AI inputs, the mapping written down
    openai_api.py     /v1/chat/completions, /v1/completions, /v1/models
    service.py        what both APIs do with a request: its model, its generation, its result
    models.py         model names -> loaded LLMs (kept from the start, or loaded on first use)
    bridge.py         LLM.run's streams (the scheduler's) <-> async streams, cancel
    metrics.py        the Prometheus metrics
    playground.html   the page at GET /

The server uses only awqinfer's public API (``awqinfer``, ``awqinfer.errors``, ``awqinfer.frontend``),
never the engine's modules; nothing in the engine imports it.
"""

from .app import create_app
from .models import Models

__all__ = ["create_app", "Models"]
