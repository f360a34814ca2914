"""The provider server's Starlette app: the two wire protocols (with OpenAI's audio routes), health,
and the test-only admin routes (book behaviors, read what was served)."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.provider_server import anthropic_api, audio_api, openai_api
from services.provider_server.behavior import Behavior, BehaviorError
from services.provider_server.protocol import ProtocolError, ProviderState, read_json


class _IntendedCuts(logging.Filter):
    """uvicorn reports a response that ends without its last chunk as an error; here that is a
    `cut` behavior doing its job."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def _admin_error(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)


async def book_behavior(request: Request) -> Response:
    """`{"model": "m", "behavior": "status=500", "times": 5}`; no `times`: until cleared."""
    state: ProviderState = request.app.state.provider
    try:
        body = await read_json(request)
    except ProtocolError as exc:
        return _admin_error(exc.message)
    model, spec, times = body.get("model"), body.get("behavior"), body.get("times")
    if not isinstance(model, str) or not model:
        return _admin_error("model: expected a model name")
    if not isinstance(spec, str):
        return _admin_error("behavior: expected a spec such as 'status=529' or 'cut=3'")
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        return _admin_error("times: expected a positive integer, or null for until cleared")
    try:
        behavior = Behavior.parse(spec)
    except BehaviorError as exc:
        return _admin_error(str(exc))
    state.book.book(model, behavior, times)
    return JSONResponse({"booked": spec, "model": model, "times": times}, status_code=201)


async def clear_behaviors(request: Request) -> Response:
    state: ProviderState = request.app.state.provider
    state.book.clear(request.query_params.get("model"))
    return Response(status_code=204)


async def stats(request: Request) -> Response:
    state: ProviderState = request.app.state.provider
    return JSONResponse(
        {
            "requests": state.requests,
            "open_streams": state.open_streams,
            "streams_started": state.streams_started,
        }
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(state: ProviderState | None = None) -> Starlette:
    logging.getLogger("uvicorn.error").addFilter(_IntendedCuts())
    app = Starlette(
        routes=[
            Route("/v1/messages", anthropic_api.messages, methods=["POST"]),
            Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
            Route("/v1/audio/speech", audio_api.speech, methods=["POST"]),
            Route("/v1/audio/transcriptions", audio_api.transcriptions, methods=["POST"]),
            Route("/admin/behaviors", book_behavior, methods=["POST"]),
            Route("/admin/behaviors", clear_behaviors, methods=["DELETE"]),
            Route("/admin/stats", stats, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    app.state.provider = state or ProviderState()
    return app
