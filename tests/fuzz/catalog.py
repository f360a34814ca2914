"""Every case of the campaign, known when pytest collects the suite, each a test of its own; a case
that still fails because its fix has not landed is marked here, by its exact id, as a strict xfail
(the suite goes red the moment the fix lands, and the mark is removed then)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fuzz.http_cases import HttpCase, edge_document, http_cases
from tests.fuzz.ws_cases import WsCase, ws_cases

DOCUMENT = edge_document()
HTTP_CASES: list[HttpCase] = http_cases(DOCUMENT)
WS_CASES: list[WsCase] = ws_cases()

_NOT_UTF8_FRAME = (
    "the edge drops a text frame that is not UTF-8 without a close frame (the client sees 1006): wsproto "
    "reports it as CloseConnection(1007) while the connection is still OPEN, and "
    "services/edge/ws_link.py answers a CloseConnection only in REMOTE_CLOSING (RFC 6455 7.1.7: send "
    "the close frame, 1007, then close)"
)
# The routes that call the mesh with the caller's request id and trace context as gRPC metadata.
_MESH_CALLERS = (
    "POST /v1/agents",
    "GET /v1/agents",
    "GET /v1/agents/{id}",
    "PATCH /v1/agents/{id}",
    "DELETE /v1/agents/{id}",
    "POST /v1/conversations",
    "GET /v1/conversations",
    "GET /v1/conversations/{id}",
    "PATCH /v1/conversations/{id}",
    "DELETE /v1/conversations/{id}",
    "POST /v1/conversations/{id}/messages",
    "GET /v1/conversations/{id}/messages",
    "POST /v1/conversations/{id}/archive",
    "GET /v1/conversations/{id}/archives",
    "GET /v1/conversations/{id}/archives/{archive_id}",
    "GET /v1/conversations/{id}/events",
    "POST /v1/chat/completions",
    "POST /oauth2/token",
    "POST /oauth2/revoke",
    "POST /oauth2/introspect",
    "POST /oauth2/register",
    "GET /.well-known/jwks.json",
    "GET /v1/usage",
    "GET /v1/usage/invoice-preview",
    "GET /v1/audit",
)
_CACHED_READS = ("GET /v1/agents/{id}", "GET /v1/conversations/{id}")  # may answer from Redis
_STREAMS = ("GET /v1/conversations/{id}/events",)  # 200 sent before the stream's first call
_REQUEST_ID_NOT_ASCII = (
    "500: the edge takes the caller's x-request-id as sent (services/edge/middleware.py _incoming) and "
    "hands it to every gRPC call as metadata; grpc refuses a value that is not printable ASCII "
    "(ExecuteBatchError at SendInitialMetadata), which the edge answers as an unexpected error"
)
_REQUEST_ID_HUGE = (
    "429 RESOURCE_EXHAUSTED 'received metadata size exceeds hard limit (20132 vs. 16384)': a caller's "
    "20 KB x-request-id is passed on as gRPC metadata (services/edge/middleware.py _incoming keeps any "
    "length), so every call to the mesh fails, and the edge answers it as a rate limit"
)
_TRACEPARENT_GARBAGE = (
    "500: a traceparent that is not W3C trace context (bytes 0xff 0x2d 0xfe) is passed on as gRPC "
    "metadata as sent (services/edge/middleware.py _incoming, then the tracing context of every call), "
    "and grpc refuses the metadata (ExecuteBatchError at SendInitialMetadata)"
)
# case id -> why it still fails (the fix it waits for).
KNOWN_FAILURES: dict[str, str] = {
    **{f"{route} | x-request-id=not-latin-text": _REQUEST_ID_NOT_ASCII for route in _MESH_CALLERS},
    **{f"{route} | x-request-id=20k": _REQUEST_ID_HUGE for route in _MESH_CALLERS if route not in _STREAMS},
    **{
        f"{route} | traceparent=garbage": _TRACEPARENT_GARBAGE
        for route in _MESH_CALLERS
        if route not in _CACHED_READS
    },
    "ws frame | invalid-utf8-text": _NOT_UTF8_FRAME,
    "ws frame | overlong-utf8-text": _NOT_UTF8_FRAME,
    "ws frame | utf8-encoded-surrogate-text": _NOT_UTF8_FRAME,
}


def params(cases: list[HttpCase] | list[WsCase]) -> list[Any]:
    """The cases as pytest parameters named by their ids, the known failures marked."""
    marked: list[Any] = []
    for case in cases:
        reason = KNOWN_FAILURES.get(case.id)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        marked.append(pytest.param(case, id=case.id, marks=marks))
    return marked
