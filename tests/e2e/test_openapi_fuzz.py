"""schemathesis against the edge's own `/v1/openapi.json`, through Envoy with a real token: every
conversation, agent, message and archive operation gets generated requests (a bounded number each),
and none may answer 5xx, an undocumented status, or a body its schema does not describe."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err, Ok

from tests.e2e.conftest import Slice

pytestmark = pytest.mark.integration

FUZZED_TAGS = {"agents", "conversations", "messages", "archives"}
EXAMPLES_PER_OPERATION = 12
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)


def fuzz(document: dict[str, Any], base_url: str, token: str) -> list[str]:
    """Run every fuzzed operation's examples (blocking: the slice serves on the test's event loop,
    so this runs on a thread) and return the failures, one line each."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    operations = list(schema.get_all_operations())
    # An operation schemathesis cannot read is a failure of the document itself.
    failures += [f"unreadable operation: {result.err()}" for result in operations if isinstance(result, Err)]
    for operation in (result.ok() for result in operations if isinstance(result, Ok)):
        if not FUZZED_TAGS & set(operation.tags or ()):
            continue

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=10)
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:  # collect every failure: one run reports them all
                label = case.operation.label
                failures.append(f"{label}: {response.status_code} {response.text[:160]}: {exc}")

        run()
    return failures


async def test_the_edge_matches_its_openapi_document(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        document = (await client.get("/v1/openapi.json")).json()
        # Real ids for some examples: an agent of this tenant.
        await client.post("/v1/agents", json={"name": "Ada", "provider": "local", "model": "echo-1"})
    failures = await asyncio.to_thread(fuzz, document, mesh_slice.front_url, mesh_slice.edge_token)
    assert failures == []
