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
# case id -> why it still fails (the fix it waits for).
KNOWN_FAILURES: dict[str, str] = {
    "POST /oauth2/introspect | client_id=nul": (
        "500: Introspect authenticates its caller by looking its client_id up in Postgres, which "
        "refuses 0x00 (asyncpg CharacterNotInRepertoireError from services/token/store/directory.py "
        "client(), via services/token/clients.py authenticate); the introspection form lets a NUL "
        "client_id through where the token form refuses NUL"
    ),
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
