"""Every case of the campaign, known when pytest collects the suite, each a test of its own; a case
that still fails because its fix has not landed is marked here, by its exact id, as a strict xfail
(the suite goes red the moment the fix lands, and the mark is removed then)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fuzz.header_cases import header_attacks
from tests.fuzz.http_cases import (
    FORM,
    FORM_BODIES,
    JSON,
    JSON_BODIES,
    HttpCase,
    document_attacks,
    edge_document,
    form_attacks,
    operations,
    value_attacks,
)
from tests.fuzz.parameter_cases import parameter_attacks
from tests.fuzz.ws_cases import WsCase, ws_cases


def http_cases(document: dict[str, Any]) -> list[HttpCase]:
    """Every hostile request, in a fixed order."""
    cases: list[HttpCase] = []
    for op in operations(document):
        cases += parameter_attacks(op)
        cases += header_attacks(op)
        media_type = op.body_media_type()
        if media_type == JSON:
            valid = JSON_BODIES[op.operation_id]
            cases += document_attacks(op, valid)
            cases += value_attacks(op, valid, document)
        elif media_type == FORM:
            cases += form_attacks(op, FORM_BODIES[op.operation_id], document)
    ids = [case.id for case in cases]
    duplicates = {case_id for case_id in ids if ids.count(case_id) > 1}
    assert not duplicates, duplicates
    return cases


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
