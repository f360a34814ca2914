"""OpenAI's error shape, `{"error": {message, type, param, code}}`, on every answer of the
OpenAI-compatible routes (`/v1/chat/completions`, `/v1/models`, `/v1/models/{id}`, `/v1/audio/*`):
their SDKs pick the exception class by HTTP status, and read the message, `param` and `code` from
that shape only (the Node SDK says "404 status code (no body)" of any other).

Two ways in, one shape out:
- a handler of these routes turns what went wrong (its own refusal, a bad body, a service's gRPC
  status) into an `OpenAIError` (`openai_error`), with the parameter and code it knows;
- a refusal the edge makes before the route, in its own shape (401 from authentication, 429 from
  the rate limits, 503 while not ready, 404 and 405 of no route, 500 of a crash), is rewritten
  into OpenAI's by `OpenAIErrorShape`, on these paths only: every other route keeps the edge's.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

import grpc
from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.edge.errors import HttpError, http_status
from services.runtime.errors import DomainError

OPENAI_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/models", "/v1/audio/speech", "/v1/audio/transcriptions"}
)
MODEL_PATH_PREFIX = "/v1/models/"

# OpenAI's error `type` per HTTP status (its SDKs pick the exception class by status).
ERROR_TYPES = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "not_found_error",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
}
# Codes that are a type of their own in OpenAI's errors (a 429 for want of quota is not a rate limit:
# retrying soon does not help).
CODE_TYPES = {"insufficient_quota": "insufficient_quota"}
# The edge's own refusal codes (services/edge/errors.py) as OpenAI names the same refusal (the
# edge's own RESOURCE_EXHAUSTED is always its rate limits').
EDGE_CODES = {
    "UNAUTHENTICATED": "invalid_api_key",
    "RESOURCE_EXHAUSTED": "rate_limit_exceeded",
    "NOT_FOUND": "unknown_url",
}
# A RESOURCE_EXHAUSTED that is a quota refusal: metering's says QUOTA_EXCEEDED, and the orchestrator
# relays it inside its own words. Any other (the agent proxy's queue full) is a rate limit.
_QUOTA = re.compile("quota", re.IGNORECASE)
# The parameter an orchestrator's INVALID_ARGUMENT names first (`messages[3].tool_call_id: ...`).
_PARAM = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): ")
# The most of an error body held to be rewritten; the edge's own are a few hundred bytes.
MAX_REWRITTEN_BYTES = 65_536
LENGTH = b"content-length"

OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def is_openai_path(path: str) -> bool:
    return path in OPENAI_PATHS or path.startswith(MODEL_PATH_PREFIX)


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, status: HTTPStatus, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def document(self) -> dict[str, Any]:
        kind = CODE_TYPES.get(self.code or "") or ERROR_TYPES.get(self.status)
        if kind is None:
            kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return JSONResponse(self.document(), status_code=self.status.value)


def bad_param(param: str, message: str) -> OpenAIError:
    """A 400 naming the request's parameter (`messages[2].tool_calls[0].id`), as OpenAI does."""
    return OpenAIError(HTTPStatus.BAD_REQUEST, f"{param}: {message}", param=param, code="invalid_value")


def model_not_found(model: str) -> OpenAIError:
    """The 404 of a model that is none of the caller's agents, as OpenAI words it."""
    return OpenAIError(
        HTTPStatus.NOT_FOUND,
        f"The model `{model}` does not exist or you do not have access to it: a model is the id of "
        "one of your tenant's agents (GET /v1/models lists them)",
        param="model",
        code="model_not_found",
    )


def exhausted_code(message: str) -> str:
    """The OpenAI code of a 429: `insufficient_quota` for a quota refusal, else a rate limit."""
    return "insufficient_quota" if _QUOTA.search(message) else "rate_limit_exceeded"


def from_rpc(error: grpc.aio.AioRpcError) -> OpenAIError:
    """A service's refusal in OpenAI's terms (the HTTP status from the edge's one table)."""
    status = http_status(error)
    details = error.details() or error.code().name.lower()
    named = _PARAM.match(details) if status == HTTPStatus.BAD_REQUEST else None
    if named is not None:  # a request the orchestrator refused (a tool call without its result)
        return OpenAIError(status, details, param=named.group(1), code="invalid_value")
    if status == HTTPStatus.NOT_FOUND:
        return OpenAIError(status, details, param="model", code="model_not_found")
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        return OpenAIError(status, details, code=exhausted_code(details))
    if status == HTTPStatus.UNAUTHORIZED:
        return OpenAIError(status, details, code="invalid_api_key")
    return OpenAIError(status, details, code=error.code().name.lower())


def openai_error(exc: BaseException) -> OpenAIError | None:
    """The OpenAI-shaped error of a failure before an answer began (None: not one the edge expects)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, HttpError):
        return OpenAIError(exc.status, exc.message, code=exc.code.lower())
    if isinstance(exc, grpc.aio.AioRpcError):
        return from_rpc(exc)
    if isinstance(exc, RedisError):  # the Idempotency-Key could not be claimed
        return OpenAIError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "the Idempotency-Key cannot be checked right now; retry shortly",
            code="unavailable",
        )
    if isinstance(exc, DomainError):  # the token exchange could not be made
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            return OpenAIError(HTTPStatus.UNAUTHORIZED, exc.message, code="invalid_api_key")
        return OpenAIError(HTTPStatus.SERVICE_UNAVAILABLE, exc.message, code=exc.code.name.lower())
    return None


def reshaped(status: int, body: bytes) -> bytes:
    """An edge-shaped error body (`{"code", "message", "request_id"}`) in OpenAI's shape; any other
    body as it is (already OpenAI's, or not JSON at all)."""
    try:
        document = json.loads(body)
    except ValueError:
        return body
    if not isinstance(document, dict) or "error" in document:
        return body
    code, message = document.get("code"), document.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return body
    error = OpenAIError(HTTPStatus(status), message, code=EDGE_CODES.get(code, code.lower()))
    return json.dumps(error.document(), separators=(",", ":"), ensure_ascii=False).encode()


class OpenAIErrorShape:
    """Rewrites the edge's own error answers on the OpenAI paths into OpenAI's shape (headers such
    as `WWW-Authenticate`, `Retry-After` and the RateLimit fields kept). Plain ASGI: a success, a
    stream included, passes through untouched; only an error's small JSON body is held."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_openai_path(scope.get("path", "")):
            await self._app(scope, receive, send)
            return
        held: Message | None = None
        body = bytearray()

        async def reshaping_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message  # sent with its body, once the body is rewritten
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False) and len(body) <= MAX_REWRITTEN_BYTES:
                return
            start, held = held, None
            if message.get("more_body", False):  # too large to be the edge's: passed on as it is
                await send(start)
                await send({"type": "http.response.body", "body": bytes(body), "more_body": True})
                return
            document = reshaped(start["status"], bytes(body))
            if document != body:  # else as it was (a HEAD's empty body keeps its GET's length)
                kept = [(name, value) for name, value in start.get("headers", ()) if name != LENGTH]
                length = (LENGTH, str(len(document)).encode())
                start = {**start, "headers": [*kept, length]}
            await send(start)
            await send({"type": "http.response.body", "body": document})

        await self._app(scope, receive, reshaping_send)
