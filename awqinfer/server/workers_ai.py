"""The Workers AI REST routes: the seed documents' ``curl`` and ``requests`` calls, unchanged.

    POST /client/v4/accounts/{account_id}/ai/run/{model}     (the account id is not checked)
    POST /ai/run/{model}

The body is ``LLM.run``'s inputs, exactly. The answer is Workers AI's envelope
``{"result": {"response", "usage", "finish_reason"}, "success": true, "errors": [], "messages": []}``;
with ``"stream": true`` it is ``text/event-stream``, read as the seeds' ``EventSource`` reads it:

    data: {"response":"<text>"}            one event per text chunk
    data: {"response":"","usage":{...}}    when the generation has finished
    data: [DONE]

A stream the server has to cut short (it is shutting down) or that fails sends
``data: {"response":"","errors":[{"code","message"}]}`` before its ``[DONE]``.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..frontend import check_inputs, json_mode
from ..errors import InputError
from .service import collect, field_of, internal_error, shutting_down, start_generation
from .web import SSE_DONE, EventStream, bad_input, envelope, envelope_error, read_json, sse, until_disconnect

router = APIRouter()


@router.post("/client/v4/accounts/{account_id}/ai/run/{model:path}")
@router.post("/ai/run/{model:path}")
async def run(request: Request):
    """Run the model named in the path on the JSON body; the result in an envelope, or an SSE stream."""
    inputs = await read_json(request)
    try:
        stream = check_inputs(inputs).stream  # every schema error is a 400 before the request queues
    except InputError as e:
        raise bad_input(str(e), param=field_of(str(e))) from None
    gen, _ = await start_generation(request, request.path_params["model"], inputs)
    if stream:
        return EventStream(events(gen), gen)
    return JSONResponse(envelope(await until_disconnect(request, collect(gen, json_mode(inputs)))))


async def events(gen):
    """The SSE events of one generation, as Workers AI sends them."""
    try:
        async for chunk in gen:
            delta = {"tool_call_delta": chunk["tool_call_delta"]} if "tool_call_delta" in chunk else {}
            if chunk["response"] or delta:
                yield sse({"response": chunk["response"], **delta})
            if "usage" in chunk:  # the last chunk: with the whole tool calls, when the model made any
                calls = {"tool_calls": chunk["tool_calls"]} if "tool_calls" in chunk else {}
                yield sse({"response": "", "usage": chunk["usage"], **calls})
        if gen.cancel_reason == "shutdown":
            yield sse({"response": "", **_errors(shutting_down())})
    except Exception as e:  # noqa: BLE001 - an engine failure ends this stream, not the server
        yield sse({"response": "", **_errors(internal_error(e))})
    yield SSE_DONE


def _errors(error) -> dict:
    body = envelope_error(error)
    return {"errors": body["errors"]}
