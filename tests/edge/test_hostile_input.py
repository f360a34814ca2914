"""Hostile input at the edge, on every route that takes it: each is refused with a 400 naming what is
wrong before any RPC is made, never a 500. The routes come from the edge's own route table, so a new
route is covered when it is added."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from services.edge.app import api_routes
from services.edge.json_input import MAX_DEPTH
from services.edge.routes import ApiRoute, Content
from services.stack.infra import Infrastructure
from tests.edge.orchestrator_world import EdgeWorld, edge_world

pytestmark = pytest.mark.integration

# `{"name": [[[...]]]}` 100,000 deep: about 200 KB, under the body limit.
DEEP_BODY = b'{"name":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
TOO_DEEP = f"nests arrays and objects deeper than {MAX_DEPTH} levels"


def _takes_json(route: ApiRoute) -> bool:
    body = route.body
    return body is not None and (not isinstance(body, Content) or body.media_type == "application/json")


def _url(route: ApiRoute) -> str:
    path = route.path
    for name in route.path_params:
        path = path.replace(f"{{{name}}}", str(uuid.uuid4()))
    return path


def _paged(route: ApiRoute) -> bool:
    return any(name == "page_size" for name, _, _ in route.query)


def _params(routes: list[ApiRoute]) -> list[Any]:
    return [pytest.param(route, id=f"{route.method} {route.path}") for route in routes]


JSON_ROUTES = [route for route in api_routes() if _takes_json(route)]
PAGED_ROUTES = [route for route in api_routes() if _paged(route)]


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure) as served:
        yield served


def _refusal(response: httpx.Response) -> tuple[str, str]:
    """The code and message of a 400, in the edge's error shape, RFC 6749's (the OAuth routes) or
    OpenAI's (chat completions)."""
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()
    if isinstance(body.get("error"), dict):
        return body["error"]["code"], body["error"]["message"]
    if "error" in body:
        return body["error"], body["error_description"]
    return body["code"], body["message"]


def test_the_route_table_has_the_routes_the_attack_hit() -> None:
    methods_and_paths = {(route.method, route.path) for route in JSON_ROUTES}
    assert {
        ("POST", "/v1/agents"),
        ("PATCH", "/v1/agents/{id}"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/conversations/{id}/messages"),
        ("POST", "/v1/conversations/{id}/archive"),
        ("POST", "/oauth2/register"),
    } <= methods_and_paths
    assert {route.path for route in PAGED_ROUTES} >= {
        "/v1/agents",
        "/v1/conversations",
        "/v1/conversations/{id}/messages",
        "/v1/conversations/{id}/archives",
        "/v1/usage",
        "/v1/audit",
    }


@pytest.mark.parametrize("route", _params(JSON_ROUTES))
async def test_a_deeply_nested_body_is_400_invalid_json_on_every_json_route(
    world: EdgeWorld, route: ApiRoute
) -> None:
    headers = {"content-type": "application/json", "if-match": '"etag"'}
    async with world.client() as client:
        response = await client.request(route.method, _url(route), content=DEEP_BODY, headers=headers)
    code, message = _refusal(response)
    assert code in ("INVALID_JSON", "invalid_client_metadata", "invalid_json"), response.text
    assert message == f"the body {TOO_DEEP}"


async def test_registration_refuses_a_deep_body_without_any_token(world: EdgeWorld) -> None:
    async with httpx.AsyncClient(base_url=world.url, timeout=10) as client:
        response = await client.post(
            "/oauth2/register", content=DEEP_BODY, headers={"content-type": "application/json"}
        )
    assert _refusal(response) == ("invalid_client_metadata", f"the body {TOO_DEEP}")


async def test_a_deeply_nested_frame_is_an_invalid_json_error_frame_and_the_connection_stays(
    world: EdgeWorld,
) -> None:
    async with connect(world.ws_url, additional_headers=world.headers(), compression=None) as ws:
        await ws.send('{"action":"ping","x":' + "[" * 10_000 + "]" * 10_000 + "}")
        async with asyncio.timeout(5):
            error = json.loads(await ws.recv())
        assert (error["type"], error["code"]) == ("error", "INVALID_JSON"), error
        assert error["message"] == f"the frame {TOO_DEEP}"
        await ws.send(json.dumps({"action": "ping", "request_id": "after"}))
        async with asyncio.timeout(5):
            assert json.loads(await ws.recv())["request_id"] == "after"


async def test_a_frame_with_text_postgres_cannot_store_is_refused_naming_the_field(world: EdgeWorld) -> None:
    streams = world.orchestrator.converse_streams
    async with connect(world.ws_url, additional_headers=world.headers(), compression=None) as ws:
        frame = {"action": "message", "conversation_id": str(uuid.uuid4()), "text": "hi\u0000"}
        await ws.send(json.dumps(frame))
        async with asyncio.timeout(5):
            error = json.loads(await ws.recv())
    assert (error["type"], error.get("code")) == ("error", "INVALID_ARGUMENT"), error
    assert error["message"] == "text: must not contain NUL (U+0000)"
    assert world.orchestrator.converse_streams == streams


@pytest.mark.parametrize("route", _params(PAGED_ROUTES))
@pytest.mark.parametrize(
    ("page_size", "problem"),
    [
        (str(2**31), "out of range"),
        (str(2**63), "out of range"),
        ("9" * 5000, "out of range"),
        (str(-(2**31) - 1), "out of range"),
        ("²", "must be a whole number"),
        ("--5", "must be a whole number"),
    ],
)
async def test_a_page_size_outside_its_proto_fields_range_is_400_naming_it_on_every_list_route(
    world: EdgeWorld, route: ApiRoute, page_size: str, problem: str
) -> None:
    async with world.client() as client:
        response = await client.get(_url(route), params={"page_size": page_size})
    code, message = _refusal(response)
    assert code == "INVALID_ARGUMENT"
    assert message.startswith("page_size:"), message
    assert problem in message, message


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
async def test_a_chat_completion_integer_outside_its_proto_fields_range_is_400_naming_it(
    world: EdgeWorld, name: str
) -> None:
    body = {"model": str(uuid.uuid4()), "messages": [{"role": "user", "content": "hi"}], name: 2**40}
    async with world.client() as client:
        response = await client.post("/v1/chat/completions", json=body)
    code, message = _refusal(response)
    assert message == f"{name}: is out of range (a 32-bit integer)", (code, message)
