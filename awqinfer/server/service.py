"""What both APIs do with a request once its inputs are in the Workers AI schema.

    name -> the loaded model (models.py)        ModelError -> 400 (5007), or 404 on /v1
    inputs -> a Generation (bridge.py)          QueueFull -> 429 (3040), ShuttingDown -> 503,
                                                the engine's InputError -> 400 (5006),
                                                TemplateCheckpointError -> 500 (3000): the
                                                model's own chat template is broken
    a Generation -> the non-streamed result     join_chunks, as LLM.run joins its own stream

The routes differ only in how they spell requests and answers (workers_ai.py, openai_api.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.requests import Request

from ..frontend import join_chunks
from ..errors import Cancelled, InputError, QueueFull, TemplateCheckpointError
from .bridge import Engine, Generation, ShuttingDown
from .metrics import Metrics
from .models import ModelError, Models
from .web import ApiError, bad_input, until_disconnect

log = logging.getLogger("awqinfer.server")


@dataclass
class ServerState:
    """What the routes share: app.state.server."""

    models: Models
    engine: Engine
    metrics: Metrics
    api_key: str | None
    seed: int | None = None  # serve --seed: the seed of requests that set none


def state(request: Request) -> ServerState:
    return request.app.state.server


def shutting_down() -> ApiError:
    return ApiError(503, 3040, "the server is shutting down; retry on another instance or later",
                    oa_type="server_error", oa_code="shutting_down")


async def start_generation(request: Request, model: str, inputs: dict,
                           options: dict | None = None) -> tuple[Generation, str]:
    """Load ``model`` and start ``inputs`` on it (both abandoned if the client leaves); -> (generation, name).
    ``options``: more keyword arguments of ``LLM.run`` (the OpenAI route's tool_choice, parallel_tool_calls)."""
    server = state(request)
    if server.seed is not None and inputs.get("seed") is None:
        inputs = {**inputs, "seed": server.seed}

    async def start() -> Generation:
        try:
            llm = await server.models.get(model)
        except ModelError as e:
            raise ApiError(400, 5007, f"No such model {model}: {e}" if e.not_found else str(e), prefix="AiError: ",
                           param="model", oa_code="model_not_found" if e.not_found else "model_not_loadable",
                           oa_status=404 if e.not_found else 400) from None
        try:
            return await server.engine.start(llm, inputs, options)
        except QueueFull as e:
            raise ApiError(429, 3040, f"Out of capacity: {e}", oa_type="rate_limit_error",
                           oa_code="queue_full") from None
        except ShuttingDown:
            raise shutting_down() from None
        except InputError as e:
            raise bad_input(str(e), param=field_of(str(e))) from None
        except TemplateCheckpointError as e:
            log.error("model %s: %s", model, e)
            raise ApiError(500, 3000, f"the chat template of model {model} is broken, not the request: {e}",
                           prefix="AiError: ", oa_type="server_error", oa_code="broken_chat_template") from None

    return await until_disconnect(request, start()), model


async def collect(gen: Generation, parse_json: bool = False) -> dict:
    """The non-streamed result of ``gen``: its chunks joined (503 if the server cut it short);
    ``parse_json`` (JSON mode): the response as the parsed value, as Workers AI returns it."""
    try:
        chunks = [chunk async for chunk in gen]
    finally:
        gen.cancel("client")  # a no-op if it ended; else the client left (this task was cancelled)
    try:
        return join_chunks(chunks, parse_json)
    except Cancelled:
        raise shutting_down() from None


def field_of(message: str) -> str | None:
    """The field an InputError message starts with ('temperature: got ...' -> 'temperature')."""
    head = message.split(":", 1)[0]
    if message.startswith("unknown field "):
        return message.split("'")[1] if "'" in message else None
    return head if head and " " not in head else None


def internal_error(exc: BaseException, logged: bool = False) -> ApiError:
    """An unexpected failure, answered without its traceback (which goes to the log unless ``logged``)."""
    if not logged:
        log.error("request failed", exc_info=exc)
    return ApiError(500, 3000, f"internal error ({type(exc).__name__}); the server log has the details",
                    oa_type="server_error", oa_code="internal_error")
