"""HTTP plumbing both APIs share: errors in two shapes, the body, the API key, SSE, disconnects.

Errors: an ``ApiError`` carries a status, a Workers AI code and a message, and is rendered
in the shape of the route it happened on: Workers AI's envelope
``{"result": null, "success": false, "errors": [{"code", "message"}], "messages": []}``, or on
the OpenAI routes (``/v1/...``) ``{"error": {"message", "type", "param", "code"}}``.

Disconnects: a client that closes its connection cancels its generation. ``EventStream``
(an SSE response) watches for the close for as long as it streams, so a generation is
stopped even while no chunk is being written (a long prompt); ``until_disconnect`` does the
same for the work before a response exists (queueing, loading, a non-streamed generation).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import suppress

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

MAX_BODY = 10 * 1024 * 1024  # bytes of a request body
DRAIN_LIMIT = 64 * 1024 * 1024  # a body over MAX_BODY is read (and dropped) this far, so the client sees the 413
SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ApiError(Exception):
    """An error answer: HTTP ``status``, Workers AI ``code``, and how the OpenAI shape spells it."""

    def __init__(self, status: int, code: int, message: str, *, prefix: str = "", param: str | None = None,
                 oa_type: str = "invalid_request_error", oa_code: str | None = None, oa_status: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.prefix = status, code, message, prefix
        self.param, self.oa_type, self.oa_code, self.oa_status = param, oa_type, oa_code, oa_status


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


def bad_input(message: str, param: str | None = None) -> ApiError:
    """A request that breaks the schema: HTTP 400, Workers AI code 5006, the field named."""
    return ApiError(400, 5006, message, prefix="AiError: Bad input: ", param=param)


def is_openai(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-compatible routes (so errors take OpenAI's shape)."""
    return path.startswith("/v1/") or path == "/v1" or "/ai/v1/" in path


def error_response(error: ApiError, path: str) -> JSONResponse:
    """``error`` in the shape of the API that ``path`` belongs to."""
    if is_openai(path):
        body = {"error": {"message": error.message, "type": error.oa_type, "param": error.param,
                          "code": error.oa_code}}
        return JSONResponse(body, status_code=error.oa_status or error.status)
    return JSONResponse(envelope_error(error), status_code=error.status)


def envelope(result) -> dict:
    """Workers AI's success envelope around ``result``."""
    return {"result": result, "success": True, "errors": [], "messages": []}


def envelope_error(error: ApiError) -> dict:
    return {"result": None, "success": False, "errors": [{"code": error.code, "message": error.prefix + error.message}],
            "messages": []}


def sse(event: dict) -> bytes:
    """One server-sent event carrying ``event`` as JSON."""
    return b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


# --- the request body ----------------------------------------------------------------------


def _int(digits: str):
    """A JSON integer; one too long for Python's int() (over 4300 digits) reads as +-inf, which no field accepts."""
    if len(digits.lstrip("-")) <= 4300:
        return int(digits)
    return float("-inf") if digits.startswith("-") else float("inf")


async def read_json(request: Request):
    """The body as JSON, whatever its content type (the seeds' ``curl -d`` sends a form type).

    Over MAX_BODY: 413 (code 3006); empty: 400 (3003); not JSON: 400 (5006). The NaN and Infinity
    literals some JSON writers emit are read, so the field they were sent for is named when the
    schema refuses them.
    """
    too_large = ApiError(413, 3006, f"Request is too large: the body may hold at most {MAX_BODY} bytes",
                         oa_code="request_too_large")
    declared = request.headers.get("content-length", "")
    body, seen = bytearray(), 0
    async for part in request.stream():
        seen += len(part)
        if seen > DRAIN_LIMIT:
            break
        if seen <= MAX_BODY and not (declared.isdigit() and int(declared) > MAX_BODY):
            body += part
    if seen > MAX_BODY or (declared.isdigit() and int(declared) > MAX_BODY):
        raise too_large
    if not body.strip():
        raise ApiError(400, 3003, "Request is missing a body: send the inputs as a JSON object",
                       oa_code="missing_body")
    try:
        return json.loads(bytes(body), parse_int=_int)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError too
        raise bad_input(f"body: not valid JSON ({str(e)[:200]})") from None


# --- the API key ---------------------------------------------------------------------------


def key_matches(header: str, key: str) -> bool:
    """Whether an Authorization header is ``Bearer <key>``, compared in constant time."""
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class RequireKey:
    """ASGI middleware: every route but ``open_paths`` needs ``Authorization: Bearer <key>`` (HTTP 401)."""

    def __init__(self, app, key: str | None, open_paths: tuple[str, ...] = ("/health",)):
        self.app, self.key, self.open_paths = app, key, open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.key and scope["path"] not in self.open_paths:
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not key_matches(header, self.key):
                error = ApiError(401, 10000, "Authentication error: send the server's API key as "
                                             "'Authorization: Bearer <key>'", oa_code="invalid_api_key")
                await error_response(error, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- disconnects ---------------------------------------------------------------------------


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work):
    """Await ``work`` (a coroutine) unless the client leaves first: then cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone()


class EventStream(StreamingResponse):
    """An SSE response that cancels ``generation`` when the client leaves, or when the stream ends."""

    media_type = "text/event-stream"

    def __init__(self, events, generation):
        super().__init__(events, headers=SSE_HEADERS)
        self.generation = generation

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    with suppress(OSError):  # the client left while we wrote
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await _wait_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.generation.cancel("client")


def gone() -> Response:
    """The answer nobody will read, for the access log: 499 (nginx's 'client closed request')."""
    return Response(status_code=499)
