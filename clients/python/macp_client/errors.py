"""One exception for everything the platform refuses, whichever way it said so.

The edge answers a REST error as `{code, message, request_id}` (the gRPC status name or an edge
code, and a message that starts with the field it is about: `name: value is required`), the
OAuth endpoints as RFC 6749's `{error, error_description}`, a WebSocket refusal as an `error`
frame and an SSE failure as an `error` event. A caller should not have to know which: each
becomes a `MacpError` with the same attributes, the field parsed out of the message once here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# A message naming its field starts with it: `name: ...`, `limits.maxAgentTurnsPerUserMessage: ...`,
# `If-Match: ...`. A sentence ("the edge is not ready: ...") has a space before its colon.
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]-]*): ")


def field_of(message: str) -> str | None:
    """The field a platform message names at its start, if it names one."""
    match = _FIELD.match(message)
    return match.group(1) if match else None


class MacpError(Exception):
    """The platform refused a request, or could not be reached.

    status: the HTTP status (None for a WebSocket frame or a connection failure);
    code: the gRPC status name or edge code (`INVALID_ARGUMENT`, `NOT_FOUND`, ...), or the OAuth
        error (`invalid_grant`, ...);
    message: what went wrong, as the platform said it;
    field: the request field the message names, if any;
    request_id: the id to quote when reporting it;
    retry_after: seconds to wait before trying again, when the platform said;
    action: the WebSocket action refused (`message`, `subscribe`, ...), None elsewhere.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        action: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field_of(message)
        self.request_id = request_id
        self.retry_after = retry_after
        self.action = action


class MacpConnectionError(MacpError):
    """The platform could not be reached (or the connection broke past the retries)."""

    def __init__(self, message: str) -> None:
        super().__init__("UNAVAILABLE", message)


def _text(document: Mapping[str, object], key: str) -> str | None:
    value = document.get(key)
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def error_of_answer(status: int, document: object, retry_after_header: str | None = None) -> MacpError:
    """The error of an HTTP answer with `status`: the edge's shape, RFC 6749's, or neither."""
    fields: Mapping[str, object] = document if isinstance(document, dict) else {}
    retry_after = _number(retry_after_header)
    oauth_error = _text(fields, "error")
    if oauth_error is not None:
        return MacpError(
            oauth_error, _text(fields, "error_description") or "", status=status, retry_after=retry_after
        )
    return MacpError(
        _text(fields, "code") or f"HTTP_{status}",
        _text(fields, "message") or "",
        status=status,
        request_id=_text(fields, "request_id"),
        retry_after=retry_after,
    )


def error_of_frame(frame: Mapping[str, object]) -> MacpError:
    """The error of a WebSocket `error` frame or an SSE `error` event's data."""
    return MacpError(
        _text(frame, "code") or "UNKNOWN",
        _text(frame, "message") or "",
        request_id=_text(frame, "request_id"),
        retry_after=_number(frame.get("retry_after")),
        action=_text(frame, "action"),
    )
