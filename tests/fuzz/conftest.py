"""The fuzz suite's one world and one campaign, shared by every test of the package: the whole mesh
(tests/world.py) starts once, the campaign runs once against it, and each test reads its part of
the report (a case's outcome, the bystander's calls, the health afterwards)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.stack.infra import Infrastructure
from tests.conftest import fresh_database, isolated_environ
from tests.fuzz.campaign import Report, run_campaign
from tests.fuzz.catalog import HTTP_CASES, WS_CASES
from tests.fuzz.http_cases import MAX_BODY_BYTES
from tests.fuzz.ws_cases import MAX_FRAME_BYTES
from tests.world import World, running_world

FUZZ_ENVIRON = {
    # The limits the cases are sized against, written out so the two always agree.
    "MACP_EDGE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "MACP_EDGE_WS_MAX_FRAME_BYTES": str(MAX_FRAME_BYTES),
    # The attacker sends about 2,000 requests in a minute, many without a token or failing to
    # authenticate: over its tenant's burst and its address's limits, they would be refused with
    # 429 before any handler read them, and the cases would test nothing. The limits have their
    # own tests; here they are out of reach.
    "MACP_RATE_LIMIT_TENANT": "100000/min",
    "MACP_RATE_LIMIT_CONSUMER": "100000/min",
    "MACP_RATE_LIMIT_SOURCE": "100000/min",
    "MACP_RATE_LIMIT_SOURCE_FAILURES": "100000/min",
    # Likewise the token service's lockout after failed sign-ins: hostile forms reach validation.
    "MACP_TOKEN_FREE_FAILURES": "1000",
}


@pytest.fixture(scope="package")
def fuzz_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the world's Envoy writes its logs (the evidence of a case's answer)."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="package")
async def fuzz_world(infrastructure: Infrastructure, fuzz_directory: Path) -> AsyncIterator[World]:
    async with fresh_database(infrastructure) as database_url:
        environ = {**isolated_environ(infrastructure, database_url), **FUZZ_ENVIRON}
        async with running_world(environ, fuzz_directory) as world:
            yield world


@pytest.fixture(scope="package")
async def campaign(fuzz_world: World, fuzz_directory: Path) -> Report:
    report = await run_campaign(fuzz_world, HTTP_CASES, WS_CASES)
    # Every answer, for reading the run afterwards: case id -> status (or close code) and body.
    answers = {
        **{case: [outcome.status, outcome.body[:200]] for case, outcome in report.http.items()},
        **{case: [outcome.closed, outcome.frames[:2]] for case, outcome in report.websocket.items()},
    }
    (fuzz_directory / "answers.json").write_text(json.dumps(answers, indent=1, default=str))
    # Where the budget goes, in the output of `pytest -s` (the suite must stay under 3 minutes).
    print(f"fuzz campaign seconds: {report.seconds}")
    slowest = sorted(report.websocket.items(), key=lambda item: -item[1].seconds)[:5]
    print(f"slowest frames: {[(case, round(outcome.seconds, 2)) for case, outcome in slowest]}")
    print(f"stateful answers: {sorted(report.stateful_answers.items())}")
    return report
