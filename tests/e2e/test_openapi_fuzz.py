"""schemathesis against the edge's own `/v1/openapi.json`, through Envoy with a real token: every
conversation, agent, message and archive operation gets generated requests (a bounded number each,
tests/fuzz/openapi_runs.py), and none may answer 5xx, an undocumented status, or a body its schema
does not describe. Negative data, and the operations only the whole mesh serves, are run in
tests/fuzz/test_openapi_negative.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis

from tests.e2e.conftest import Slice
from tests.fuzz.openapi_runs import POSITIVE_CHECKS as CHECKS
from tests.fuzz.openapi_runs import fuzz

pytestmark = pytest.mark.integration

FUZZED_TAGS = {"agents", "conversations", "messages", "archives"}
EXAMPLES_PER_OPERATION = 12


def walk(document: dict[str, Any], base_url: str, token: str) -> list[str]:
    """Valid requests on real resources, one per operation, each answer checked against the
    document: random bodies rarely pass the services' validation, these reach every success path."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []

    def call(label: str, status: int, etag: str = "", **parts: Any) -> Any:
        operation = schema.find_operation_by_label(label)
        assert operation is not None, label
        headers = {"authorization": f"Bearer {token}"} | ({"if-match": f'"{etag}"'} if etag else {})
        case = operation.Case(headers=headers, **parts)
        response = case.call(base_url=base_url, timeout=10)
        try:
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # every failure collected, one run reports all
            failures.append(f"{label}: {exc}")
        if response.status_code != status:
            failures.append(f"{label}: {response.status_code}, not {status}: {response.text[:200]}")
            raise AssertionError(failures[-1])
        return response.json() if response.content else None

    agent = call("POST /v1/agents", 201, body={"name": "Ada", "provider": "local", "model": "echo-1"})
    by_id = {"id": agent["id"]}
    call("GET /v1/agents", 200, query={"page_size": 10})
    call("GET /v1/agents/{id}", 200, path_parameters=by_id)
    agent = call("PATCH /v1/agents/{id}", 200, agent["etag"], path_parameters=by_id, body={"name": "Grace"})
    draft = {"participantAgentIds": [agent["id"]], "turnPolicy": "TURN_POLICY_ROUND_ROBIN"}
    conversation = call("POST /v1/conversations", 201, body=draft)
    on = {"id": conversation["id"]}
    call(
        "GET /v1/conversations", 200, query={"agent_id": agent["id"], "status": "CONVERSATION_STATUS_ACTIVE"}
    )
    call("GET /v1/conversations/{id}", 200, path_parameters=on)
    patch = {"title": "t", "limits": {"maxAgentTurnsPerUserMessage": 2}}
    conversation = call(
        "PATCH /v1/conversations/{id}", 200, conversation["etag"], path_parameters=on, body=patch
    )
    message = {"id": "0b6c1f4e-8a45-4c8e-9f0d-3a2b1c0d9e8f", "text": "hello"}
    call("POST /v1/conversations/{id}/messages", 201, path_parameters=on, body=message)
    call("POST /v1/conversations/{id}/messages", 200, path_parameters=on, body=message)
    call("GET /v1/conversations/{id}/messages", 200, path_parameters=on, query={"page_size": 1})
    archived = call("POST /v1/conversations/{id}/archive", 201, path_parameters=on, body={"close": True})
    call("GET /v1/conversations/{id}/archives", 200, path_parameters=on)
    archive = {"id": conversation["id"], "archive_id": archived["archive"]["id"]}
    call(
        "GET /v1/conversations/{id}/archives/{archive_id}",
        200,
        path_parameters=archive,
        query={"url_ttl": "60s"},
    )
    call("DELETE /v1/conversations/{id}", 204, archived["conversation"]["etag"], path_parameters=on)
    call("DELETE /v1/agents/{id}", 204, agent["etag"], path_parameters=by_id)
    return failures


async def test_the_edge_matches_its_openapi_document(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        document = (await client.get("/v1/openapi.json")).json()
    # Blocking clients on a thread: the slice serves on this test's event loop.
    walked = await asyncio.to_thread(walk, document, mesh_slice.front_url, mesh_slice.edge_token)
    token = mesh_slice.edge_token
    fuzzed = await asyncio.to_thread(
        fuzz,
        document,
        mesh_slice.front_url,
        lambda operation: token if FUZZED_TAGS & set(operation.tags or ()) else None,
        examples=EXAMPLES_PER_OPERATION,
    )
    assert walked + fuzzed == []
