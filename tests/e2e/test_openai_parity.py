"""OpenAI API parity for what MACP offers, end to end through Envoy with the official SDKs unchanged,
Python's and Node's: the models are the tenant's agents (listed, retrieved, and each listed id
works as a chat completion's `model`), a stream with `include_usage` ends with the usage, and
every refusal is OpenAI's error shape so that each SDK raises its own class: a bad key
AuthenticationError (`invalid_api_key`), an unknown or another tenant's model NotFoundError
(`model_not_found`), a turn past the plan's quota RateLimitError (`insufficient_quota`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.world import World

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NODE_CHECK = Path(__file__).with_name("openai_node_check.mjs")
HI: list[Any] = [{"role": "user", "content": "say something"}]
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def sdk(world: World, api_key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{world.front_url}/v1", api_key=api_key or world.edge_token, max_retries=0
    )


async def test_the_python_sdk_lists_the_agents_as_models_and_gets_openais_errors(world: World) -> None:
    ada, bob = await world.agent("Ada"), await world.agent("Bob", provider="compat", model="compat-1")
    stranger = await world.other_tenant()
    theirs = await stranger.agent("Theirs")
    broke = await world.tenant_without_turns()
    unpaid = await broke.agent("Unpaid")
    client, bad_key, broke_client = sdk(world), sdk(world, "not-a-token"), sdk(broke)
    try:
        listed = [model async for model in client.models.list()]
        retrieved = await client.models.retrieve(bob.id)
        texts: dict[str, str] = {}
        usages = []
        for model in listed:  # every listed id works as `model`
            stream = await client.chat.completions.create(
                model=model.id, messages=HI, stream=True, stream_options={"include_usage": True}
            )
            chunks = [chunk async for chunk in stream]
            texts[model.id] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usages.append(chunks[-1].usage)
        with pytest.raises(openai.AuthenticationError) as bad_list:
            await bad_key.models.list()
        with pytest.raises(openai.AuthenticationError) as bad_completion:
            await bad_key.chat.completions.create(model=ada.id, messages=HI)
        with pytest.raises(openai.NotFoundError) as not_mine:
            await client.models.retrieve(theirs.id)
        with pytest.raises(openai.NotFoundError) as not_an_agent:
            await client.models.retrieve("gpt-4o")
        with pytest.raises(openai.NotFoundError) as unknown_completion:
            await client.chat.completions.create(model=theirs.id, messages=HI)
        with pytest.raises(openai.RateLimitError) as no_quota:
            await broke_client.chat.completions.create(model=unpaid.id, messages=HI)
        with pytest.raises(openai.RateLimitError) as no_quota_streamed:
            await broke_client.chat.completions.create(model=unpaid.id, messages=HI, stream=True)
    finally:
        for opened in (client, bad_key, broke_client):
            await opened.close()

    # The tenant's agents, oldest first, and no other tenant's.
    assert [model.id for model in listed] == [ada.id, bob.id]
    assert all(model.object == "model" and model.owned_by == world.tenant.tenant_id for model in listed)
    assert listed[0].created == ada.create_time.seconds
    assert retrieved.model_dump(exclude_none=True) == {
        "id": bob.id,
        "object": "model",
        "created": bob.create_time.seconds,
        "owned_by": world.tenant.tenant_id,
        "name": "Bob",
    }
    assert all(texts.values()), texts
    for usage in usages:
        assert usage is not None
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0

    for unauthenticated in (bad_list.value, bad_completion.value):
        assert (unauthenticated.status_code, unauthenticated.code) == (401, "invalid_api_key")
        assert unauthenticated.type == "authentication_error"
    for not_found in (not_mine.value, not_an_agent.value, unknown_completion.value):
        assert (not_found.code, not_found.param) == ("model_not_found", "model")
        assert not_found.type == "not_found_error"
    assert theirs.id in not_mine.value.message
    for refused in (no_quota.value, no_quota_streamed.value):
        assert (refused.code, refused.type) == ("insufficient_quota", "insufficient_quota")
        assert "QUOTA_EXCEEDED" in refused.message
    assert await broke.open_holds() == []


def conformance(document: dict[str, Any], base_url: str, token: str, model: str) -> list[str]:
    """The models routes' answers (a list, a model, an unknown one, a bad key) checked against the
    OpenAPI document the edge serves; the failures, one line each."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    calls = [
        ("GET /v1/models", token, {}, 200),
        ("GET /v1/models/{id}", token, {"id": model}, 200),
        ("GET /v1/models/{id}", token, {"id": "00000000-0000-4000-8000-000000000000"}, 404),
        ("GET /v1/models", "not-a-token", {}, 401),
    ]
    for label, bearer_token, path, status in calls:
        operation = schema.find_operation_by_label(label)
        assert operation is not None, label
        case = operation.Case(headers={"authorization": f"Bearer {bearer_token}"}, path_parameters=path)
        response = case.call(base_url=base_url, timeout=10)
        if response.status_code != status:
            failures.append(f"{label}: {response.status_code}, not {status}: {response.text[:200]}")
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # collect every failure: one run reports them all
            failures.append(f"{label} {status}: {exc}")
    return failures


async def test_the_models_routes_match_the_openapi_document(world: World) -> None:
    agent = await world.agent("Ada")
    async with httpx.AsyncClient(base_url=world.front_url, timeout=10) as client:
        document = (await client.get("/v1/openapi.json")).json()
    # Blocking calls on a thread: the world serves on this test's event loop.
    assert await asyncio.to_thread(conformance, document, world.front_url, world.edge_token, agent.id) == []


async def node_check(environ: dict[str, str]) -> dict[str, Any]:
    """Runs openai_node_check.mjs with the repository's node_modules (`npm ci` installs the pinned
    `openai`); its one line of JSON."""
    node = shutil.which("node")
    assert node is not None, "node is not installed"
    assert (ROOT / "node_modules" / "openai").is_dir(), "the openai npm package is missing: run `npm ci`"
    process = await asyncio.create_subprocess_exec(
        node,
        str(NODE_CHECK),
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **environ},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def test_the_node_sdk_lists_streams_and_gets_openais_errors(world: World) -> None:
    ada, bob = await world.agent("Ada"), await world.agent("Bob")
    broke = await world.tenant_without_turns()
    unpaid = await broke.agent("Unpaid")
    result = await node_check(
        {
            "MACP_BASE_URL": f"{world.front_url}/v1",
            "MACP_API_KEY": world.edge_token,
            "MACP_QUOTA_API_KEY": broke.edge_token,
            "MACP_QUOTA_MODEL": unpaid.id,
        }
    )

    assert [model["id"] for model in result["models"]] == [ada.id, bob.id]
    assert result["retrieved"] == {
        "id": ada.id,
        "object": "model",
        "created": ada.create_time.seconds,
        "owned_by": world.tenant.tenant_id,
        "name": "Ada",
    }
    stream = result["stream"]
    assert stream["text"]
    assert stream["chunks"] >= 3  # the role, the text, the finish reason, the usage
    usage = stream["lastUsage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0

    refusals = result["refusals"]
    for name in ("badKeyList", "badKeyCompletion"):
        assert refusals[name]["class"] == "AuthenticationError", refusals[name]
        assert (refusals[name]["status"], refusals[name]["code"]) == (401, "invalid_api_key")
        # The SDK read the body: its message is the edge's, not "401 status code (no body)".
        assert "no body" not in refusals[name]["message"]
    for name in ("unknownModel", "unknownCompletion"):
        assert refusals[name]["class"] == "NotFoundError", refusals[name]
        assert (refusals[name]["code"], refusals[name]["param"]) == ("model_not_found", "model")
    assert refusals["quota"]["class"] == "RateLimitError", refusals["quota"]
    assert (refusals["quota"]["code"], refusals["quota"]["type"]) == (
        "insufficient_quota",
        "insufficient_quota",
    )
