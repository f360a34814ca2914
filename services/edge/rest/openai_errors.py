"""OpenAI's error shape, `{"error": {message, type, param, code}}`, as the chat completions endpoint
answers every refusal (its SDKs pick the exception class by HTTP status and show `param`)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

# OpenAI's error `type` per HTTP status (its SDKs pick the exception class by status).
ERROR_TYPES = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "invalid_request_error",
    HTTPStatus.CONFLICT: "invalid_request_error",
    HTTPStatus.TOO_MANY_REQUESTS: "insufficient_quota",
}


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
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad_param(param: str, message: str) -> OpenAIError:
    """A 400 naming the request's parameter (`messages[2].tool_calls[0].id`), as OpenAI does."""
    return OpenAIError(HTTPStatus.BAD_REQUEST, f"{param}: {message}", param=param, code="invalid_value")
