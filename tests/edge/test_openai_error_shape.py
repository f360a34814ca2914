"""The refusals the edge makes before a route (authentication, rate limits, no such route) are in
OpenAI's error shape on the OpenAI-compatible paths, which the official SDK reads into its
exception classes, and stay in the edge's own shape everywhere else; and the chat completion
parameters MACP cannot honour are refused naming them (and each refusal's type and code, on its
own). The edge under uvicorn, the fake
orchestrator and token service behind it, the session's real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import openai
import pytest

from services.edge.rest.openai_errors import OpenAIError, bad_param, exhausted_code, reshaped
from services.stack.infra import Infrastructure
from tests.edge.fake_orchestrator import AGENT_ID
from tests.edge.orchestrator_world import EdgeWorld, edge_world

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure) as served:
        yield served


def _sdk(world: EdgeWorld, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{world.url}/v1", api_key=api_key, max_retries=0)


@pytest.mark.parametrize("path", ["/v1/models", f"/v1/models/{AGENT_ID}", "/v1/chat/completions"])
async def test_a_missing_or_bad_key_is_openais_401_there_and_the_edges_elsewhere(
    world: EdgeWorld, path: str
) -> None:
    method = "POST" if path.endswith("completions") else "GET"
    async with world.client() as client:
        missing = await client.request(method, path, headers={"authorization": ""})
        bad = await client.request(method, path, headers={"authorization": "Bearer not-a-token"})
        elsewhere = await client.get("/v1/agents", headers={"authorization": "Bearer not-a-token"})
    for answer in (missing, bad):
        assert answer.status_code == 401
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
        assert error["param"] is None
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert answer.headers["content-length"] == str(len(answer.content))
        assert answer.headers["x-request-id"]
    assert "needs `Authorization: Bearer <token>`" in missing.json()["error"]["message"]
    assert bad.json()["error"]["message"].startswith("invalid token: ")
    assert elsewhere.status_code == 401
    assert elsewhere.json()["code"] == "UNAUTHENTICATED"


async def test_the_sdk_raises_authentication_error_with_openais_code(world: EdgeWorld) -> None:
    sdk = _sdk(world, "not-a-token")
    try:
        with pytest.raises(openai.AuthenticationError) as listing:
            await sdk.models.list()
        with pytest.raises(openai.AuthenticationError) as completing:
            await sdk.chat.completions.create(model=AGENT_ID, messages=HI)  # type: ignore[arg-type]
    finally:
        await sdk.close()
    for raised in (listing.value, completing.value):
        assert (raised.status_code, raised.code) == (401, "invalid_api_key")
        assert raised.type == "authentication_error"


async def test_no_route_under_the_openai_paths_is_openais_404_and_405(world: EdgeWorld) -> None:
    async with world.client() as client:
        nested = await client.get(f"/v1/models/{AGENT_ID}/files")
        posted = await client.post("/v1/models", json={})
    assert nested.status_code == 404
    assert nested.json()["error"]["type"] == "not_found_error"
    assert nested.json()["error"]["code"] == "unknown_url"
    assert posted.status_code == 405
    assert posted.json()["error"] == {
        "message": "POST is not allowed on /v1/models",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"response_format": "text"}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"logprobs": True}, "logprobs"),
    ],
)
async def test_what_an_agent_cannot_honour_is_refused_by_name(
    world: EdgeWorld, extra: dict[str, Any], param: str
) -> None:
    sdk = _sdk(world, world.token())
    try:
        with pytest.raises(openai.BadRequestError) as raised:
            await sdk.chat.completions.create(model=AGENT_ID, messages=HI, **extra)  # type: ignore[arg-type]
    finally:
        await sdk.close()
    assert (raised.value.param, raised.value.type) == (param, "invalid_request_error")
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["message"].startswith(f"{param}: ")


async def test_a_text_response_format_and_a_user_are_taken(world: EdgeWorld) -> None:
    sdk = _sdk(world, world.token())
    try:
        completion = await sdk.chat.completions.create(
            model=AGENT_ID,
            messages=[{"role": "user", "content": "plain words"}],
            response_format={"type": "text"},
            user="end-user-7",
        )
    finally:
        await sdk.close()
    assert completion.choices[0].message.content == "echo: plain words"


async def test_a_rate_limited_request_is_openais_429_rate_limit_exceeded(
    infrastructure: Infrastructure,
) -> None:
    async with edge_world(infrastructure, {"MACP_RATE_LIMIT_API": "2/min burst 2"}) as limited:
        sdk = _sdk(limited, limited.token())
        try:
            await sdk.chat.completions.create(model=AGENT_ID, messages=HI)  # type: ignore[arg-type]
            await sdk.chat.completions.create(model=AGENT_ID, messages=HI)  # type: ignore[arg-type]
            with pytest.raises(openai.RateLimitError) as raised:
                await sdk.chat.completions.create(model=AGENT_ID, messages=HI)  # type: ignore[arg-type]
        finally:
            await sdk.close()
    assert (raised.value.code, raised.value.type) == ("rate_limit_exceeded", "rate_limit_error")
    assert "rate limit api exceeded" in raised.value.message
    assert 1 <= int(raised.value.response.headers["retry-after"]) <= 60
    assert raised.value.response.headers["ratelimit-remaining"] == "0"


@pytest.mark.parametrize(
    ("status", "code", "kind", "openai_code"),
    [
        (401, "UNAUTHENTICATED", "authentication_error", "invalid_api_key"),
        (403, "PERMISSION_DENIED", "permission_error", "permission_denied"),
        (404, "NOT_FOUND", "not_found_error", "unknown_url"),
        (405, "METHOD_NOT_ALLOWED", "invalid_request_error", "method_not_allowed"),
        (413, "BODY_TOO_LARGE", "invalid_request_error", "body_too_large"),
        (429, "RESOURCE_EXHAUSTED", "rate_limit_error", "rate_limit_exceeded"),
        (500, "INTERNAL", "server_error", "internal"),
        (503, "NOT_READY", "server_error", "not_ready"),
    ],
)
def test_each_edge_refusal_has_openais_type_and_code(
    status: int, code: str, kind: str, openai_code: str
) -> None:
    edge_body = json.dumps({"code": code, "message": "what went wrong", "request_id": "r-1"}).encode()
    assert json.loads(reshaped(status, edge_body)) == {
        "error": {"message": "what went wrong", "type": kind, "param": None, "code": openai_code}
    }


def test_a_body_that_is_not_the_edges_passes_unchanged() -> None:
    already = json.dumps(bad_param("n", "only 1 is supported").document()).encode()
    for body in (already, b"", b"not json", b'["code", "message"]', b'{"code": 7, "message": "x"}'):
        assert reshaped(400, body) == body


def test_a_quota_refusal_is_told_from_a_rate_limit() -> None:
    assert exhausted_code("reserving a turn failed: RESOURCE_EXHAUSTED: QUOTA_EXCEEDED: ...") == (
        "insufficient_quota"
    )
    assert exhausted_code("the agent proxy has 64 calls waiting for a provider; retry shortly") == (
        "rate_limit_exceeded"
    )
    quota = OpenAIError(HTTPStatus.TOO_MANY_REQUESTS, "no turns left", code="insufficient_quota")
    assert quota.document()["error"]["type"] == "insufficient_quota"
