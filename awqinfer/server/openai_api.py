"""The OpenAI-compatible routes, so every OpenAI client reaches the same models.

    POST /v1/chat/completions     chat.completion (or chat.completion.chunk events with stream)
    POST /v1/completions          text_completion (a raw prompt: no chat template)
    GET  /v1/models               the models a request can use without a download
    GET  /v1/models/{model}
    (the same under /client/v4/accounts/{account_id}/ai/v1/, as Workers AI serves them)

Requests become Workers AI inputs (openai_params.py has the mapping) and run through the
same engine bridge as /ai/run. A stream is ``data: {chunk}`` events: the first carries the
role, then one per text chunk, then one with the finish reason; with
``stream_options.include_usage`` every chunk has ``"usage": null`` and a last one with no
choices carries the usage; then ``data: [DONE]``. A stream the server cuts short (shutdown)
or that fails sends ``data: {"error": {...}}`` before ``[DONE]``, which OpenAI's clients raise.

``stop`` is applied here, on the text: output ends before the first stop sequence, the
generation is cancelled, and the finish reason is "stop". The engine's token count ends with
the cancelled run, so ``completion_tokens`` is then the tokenizer's count of the text
generated up to and including the stop sequence.

Tool calls (chat with ``tools``): ``message.tool_calls`` lists them, each with an id
("call_..."), ``type: "function"`` and ``function: {name, arguments: JSON text}``; content is
the text before them, or null; finish_reason "tool_calls". Streamed, each call comes as OpenAI
sends it: a delta ``tool_calls: [{index, id, type, function: {name, arguments: ""}}]`` first,
then ``[{index, function: {arguments: <piece>}}]`` deltas whose join is the arguments' JSON.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..frontend import check_inputs
from ..errors import InputError
from .openai_params import chat_request, completion_request
from .service import field_of, internal_error, shutting_down, start_generation, state
from .web import SSE_DONE, ApiError, EventStream, bad_input, read_json, sse, until_disconnect

router = APIRouter()
PREFIXES = ("/v1", "/client/v4/accounts/{account_id}/ai/v1")
MAX_STOP_CHARS = 512


class StopScanner:
    """Cuts a stream of text before the first stop sequence, holding back what may begin one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """-> (the text that is safe to pass on, the stop sequence found or None)."""
        if not self.stops:
            return text, None
        text = self.held + text
        found = min(((text.find(s), s) for s in self.stops if s in text), default=None)
        if found is not None:
            self.held = ""
            return text[:found[0]], found[1]
        keep = next((k for k in range(min(len(text), max(map(len, self.stops)) - 1), 0, -1)
                     if any(s.startswith(text[-k:]) for s in self.stops)), 0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], None

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


class Completion:
    """A generation's text with the stop sequences applied; ``finish_reason``, ``usage`` and
    ``tool_calls`` (the engine's [{name, arguments}]) once ended."""

    def __init__(self, gen, stops: tuple[str, ...]):
        self.gen = gen
        self.scanner = StopScanner(stops)
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.tool_calls: list[dict] = []

    async def pieces(self):
        """What to send, in order: text pieces (str) and tool-call pieces (the engine's
        tool_call_delta dicts); a stop sequence in the text ends them (and cancels the generation)."""
        raw = []
        async for chunk in self.gen:
            if "tool_call_delta" in chunk:
                yield chunk["tool_call_delta"]
            text, stop = self.scanner.feed(chunk["response"])
            raw.append(text)
            if stop is not None:
                self.gen.cancel("stop")
                generated = len(self.gen.llm.tokenizer.encode("".join(raw) + stop, add_special_tokens=False))
                prompt = self.gen.prompt_tokens or 0
                self.finish_reason = "stop"
                self.usage = {"prompt_tokens": prompt, "completion_tokens": generated,
                              "total_tokens": prompt + generated}
            elif "usage" in chunk:
                text += self.scanner.flush()
                self.finish_reason, self.usage = chunk["finish_reason"], chunk["usage"]
                self.tool_calls = chunk.get("tool_calls", [])
            if text:
                yield text
            if stop is not None:
                return


class Shape:
    """How one endpoint spells its answer: chat.completion(.chunk) or text_completion."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self._call_ids: dict[int, str] = {}

    def call_id(self, index: int) -> str:
        """The id of this answer's tool call ``index`` (made on first use, the same streamed or not)."""
        return self._call_ids.setdefault(index, "call_" + uuid.uuid4().hex[:24])

    def _object(self, kind: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def full(self, text: str, finish_reason: str, usage: dict, tool_calls: list[dict] = ()) -> dict:
        if self.chat:
            message = {"role": "assistant", "content": text}
            if tool_calls:
                message["content"] = text or None
                message["tool_calls"] = [
                    {"id": self.call_id(i), "type": "function",
                     "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
                    for i, call in enumerate(tool_calls)]
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            return self._object("chat.completion", [choice], usage=usage)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._object("text_completion", [choice], usage=usage)

    def chunk(self, text: str | None, finish_reason: str | None = None, first: bool = False, **extra) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self._object("chat.completion.chunk", [choice], **extra)
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return self._object("text_completion", [choice], **extra)

    def tool_chunk(self, delta: dict, **extra) -> dict:
        """A chat chunk with one piece of a tool call: its id, type and name first, then arguments."""
        if "name" in delta:
            call = {"index": delta["index"], "id": self.call_id(delta["index"]), "type": "function",
                    "function": {"name": delta["name"], "arguments": ""}}
        else:
            call = {"index": delta["index"], "function": {"arguments": delta["arguments"]}}
        choice = {"index": 0, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None}
        return self._object("chat.completion.chunk", [choice], **extra)

    def usage_chunk(self, usage: dict) -> dict:
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [], usage=usage)


async def chat_completions(request: Request):
    """POST /v1/chat/completions."""
    return await _complete(request, chat=True)


async def completions(request: Request):
    """POST /v1/completions."""
    return await _complete(request, chat=False)


async def _complete(request: Request, chat: bool):
    req = (chat_request if chat else completion_request)(await read_json(request))
    if any(len(s) > MAX_STOP_CHARS for s in req.stop):
        raise bad_input(f"stop: a stop sequence may have at most {MAX_STOP_CHARS} characters", "stop")
    try:
        check_inputs(req.inputs)  # the Workers AI schema's own checks, before the request queues
    except InputError as e:
        raise bad_input(str(e), param=field_of(str(e))) from None
    model, inputs = req.model, req.inputs
    adapter = state(request).models.adapter(model)
    if adapter is not None:  # an adapter's name as the model: the base model with that adapter
        model, inputs = adapter[0], {**inputs, "lora": adapter[1]}
    gen, _ = await start_generation(request, model, inputs, req.options)
    shape, completion = Shape(chat, req.model), Completion(gen, req.stop)
    if req.stream:
        return EventStream(_events(completion, shape, req.include_usage), gen)
    return JSONResponse(await until_disconnect(request, _whole(completion, shape)))


async def _whole(completion: Completion, shape: Shape) -> dict:
    try:
        text = "".join([piece async for piece in completion.pieces() if isinstance(piece, str)])
    finally:
        completion.gen.cancel("client")  # a no-op if it ended; else the client left
    if completion.usage is None:  # cut short by a shutdown
        raise shutting_down()
    return shape.full(text, completion.finish_reason, completion.usage, completion.tool_calls)


async def _events(completion: Completion, shape: Shape, include_usage: bool):
    """The SSE events of one OpenAI stream (see the module docstring)."""
    extra = {"usage": None} if include_usage else {}
    try:
        if shape.chat:
            yield sse(shape.chunk(None, first=True, **extra))
        async for piece in completion.pieces():
            yield sse(shape.chunk(piece, **extra) if isinstance(piece, str) else shape.tool_chunk(piece, **extra))
        if completion.usage is None:
            error = shutting_down() if completion.gen.cancel_reason == "shutdown" else None
        else:
            error = None
            yield sse(shape.chunk(None, completion.finish_reason, **extra))
            if include_usage:
                yield sse(shape.usage_chunk(completion.usage))
    except Exception as e:  # noqa: BLE001 - an engine failure ends this stream, not the server
        error = internal_error(e)
    if error is not None:
        yield sse({"error": {"message": error.message, "type": error.oa_type, "param": None, "code": error.oa_code}})
    yield SSE_DONE


async def list_models(request: Request):
    """GET /v1/models: the loaded models, then the known ones on this machine."""
    return {"object": "list", "data": [_model_card(request, name) for name in state(request).models.available()]}


async def get_model(request: Request):
    """GET /v1/models/{model}."""
    name = request.path_params["model"]
    if name not in state(request).models.available():
        raise ApiError(404, 5007, f"The model '{name}' does not exist here (see GET /v1/models)", param="model",
                       oa_code="model_not_found")
    return _model_card(request, name)


def _model_card(request: Request, name: str) -> dict:
    return {"id": name, "object": "model", "created": request.app.state.started, "owned_by": "awqinfer"}


for _prefix in PREFIXES:
    router.add_api_route(_prefix + "/chat/completions", chat_completions, methods=["POST"])
    router.add_api_route(_prefix + "/completions", completions, methods=["POST"])
    router.add_api_route(_prefix + "/models", list_models, methods=["GET"])
    router.add_api_route(_prefix + "/models/{model:path}", get_model, methods=["GET"])
