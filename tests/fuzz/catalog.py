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

# case id -> why it still fails (the fix it waits for).
KNOWN_FAILURES: dict[str, str] = {}


def params(cases: list[HttpCase] | list[WsCase]) -> list[Any]:
    """The cases as pytest parameters named by their ids, the known failures marked."""
    marked: list[Any] = []
    for case in cases:
        reason = KNOWN_FAILURES.get(case.id)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        marked.append(pytest.param(case, id=case.id, marks=marks))
    return marked
