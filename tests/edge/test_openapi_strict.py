"""The edge's OpenAPI document is strict, and the edge does what it says: a create body's required
fields are `required` (and refused by name when missing), the fields the server assigns are
`readOnly`, every route documents the 429 of the rate limits and every PATCH the 428 of a missing
If-Match, an empty `page_size=` is a 400 naming it, and a 405 lists the path's methods in `Allow`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.edge.app import API_TITLE, API_VERSION, api_routes
from services.edge.routes import ApiRoute, openapi_document
from services.stack.infra import Infrastructure
from tests.edge.orchestrator_world import EdgeWorld, edge_world

DOCUMENT = openapi_document(api_routes(), title=API_TITLE, version=API_VERSION)
SCHEMAS: dict[str, Any] = DOCUMENT["components"]["schemas"]


def _body_schema(path: str, method: str) -> dict[str, Any]:
    reference: str = DOCUMENT["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"][
        "$ref"
    ]
    schema: dict[str, Any] = SCHEMAS[reference.removeprefix("#/components/schemas/")]
    return schema


@pytest.mark.parametrize(
    ("path", "required"),
    [
        ("/v1/agents", ["name", "provider", "model"]),
        ("/v1/conversations", ["participantAgentIds", "turnPolicy"]),
        ("/v1/tool-servers", ["name", "url"]),
    ],
)
def test_a_create_body_marks_its_required_fields_non_empty(path: str, required: list[str]) -> None:
    schema = _body_schema(path, "post")
    assert schema["required"] == required
    for name in required:
        field = schema["properties"][name]
        if field.get("type") == "array":
            assert field["minItems"] == 1
        elif "enum" in field:
            assert not any(value.endswith("_UNSPECIFIED") for value in field["enum"]), field
        else:
            assert field["minLength"] >= 1


@pytest.mark.parametrize("path", ["/v1/agents/{id}", "/v1/conversations/{id}"])
def test_a_patch_body_and_a_response_require_nothing(path: str) -> None:
    patch = _body_schema(path, "patch")
    assert "required" not in patch
    reference = DOCUMENT["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    response = SCHEMAS[reference["$ref"].removeprefix("#/components/schemas/")]
    assert "required" not in response
    # The same members: a PATCH only narrows what it may not clear (tests/edge/test_openapi_constraints.py).
    assert patch["properties"].keys() == response["properties"].keys()


@pytest.mark.parametrize(
    ("schema", "assigned"),
    [
        ("macp.conversation.v1.Agent", ["id", "etag", "tenantId", "ownerId", "createTime", "updateTime"]),
        (
            "macp.conversation.v1.Conversation",
            ["id", "etag", "status", "archiveKey", "createTime", "updateTime", "archiveTime"],
        ),
        ("macp.tool_gateway.v1.ToolServer", ["id", "etag", "tenantId", "createTime"]),
        ("macp.conversation.v1.Message", ["sequence", "createTime"]),
    ],
)
def test_the_fields_the_server_assigns_are_read_only(schema: str, assigned: list[str]) -> None:
    properties = SCHEMAS[schema]["properties"]
    assert [name for name in assigned if properties[name].get("readOnly") is not True] == []
    assert "readOnly" not in properties.get("name", {})


def test_every_route_documents_the_429_of_the_rate_limits_and_every_patch_the_428() -> None:
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            assert "429" in operation["responses"], (method, path)
            assert "Retry-After" in operation["responses"]["429"]["headers"]
            if method == "patch":
                assert "428" in operation["responses"], path


PAGED_ROUTES = [route for route in api_routes() if any(name == "page_size" for name, _, _ in route.query)]


def _url(route: ApiRoute) -> str:
    path = route.path
    for name in route.path_params:
        path = path.replace(f"{{{name}}}", str(uuid.uuid4()))
    return path


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure) as served:
        yield served


def _refusal(response: Any, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    code: str = body["code"]
    message: str = body["message"]
    assert code == ("INVALID_ARGUMENT" if status == 400 else code)
    return message


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/agents", {"name": "a", "provider": "local"}, "model: value is required"),
        (
            "/v1/agents",
            {"provider": "local", "model": ""},
            "name: value is required; model: value is required",
        ),
        (
            "/v1/conversations",
            {"turnPolicy": "TURN_POLICY_ROUND_ROBIN"},
            "participantAgentIds: value is required",
        ),
        (
            "/v1/conversations",
            {"participantAgentIds": [str(uuid.uuid4())], "turnPolicy": "TURN_POLICY_UNSPECIFIED"},
            "turnPolicy: value is required",
        ),
        ("/v1/tool-servers", {"name": "weather"}, "url: value is required"),
    ],
)
async def test_a_create_without_a_required_field_is_400_naming_it(
    world: EdgeWorld, path: str, body: dict[str, Any], message: str
) -> None:
    async with world.client() as client:
        response = await client.post(path, json=body)
    assert _refusal(response) == message


@pytest.mark.integration
@pytest.mark.parametrize("route", [pytest.param(r, id=r.path) for r in PAGED_ROUTES])
async def test_an_empty_page_size_is_400_naming_it_on_every_list_route(
    world: EdgeWorld, route: ApiRoute
) -> None:
    async with world.client() as client:
        response = await client.get(f"{_url(route)}?page_size=")
    assert _refusal(response).startswith("page_size: empty"), response.text


@pytest.mark.integration
async def test_a_patch_without_if_match_is_428(world: EdgeWorld) -> None:
    async with world.client() as client:
        response = await client.patch(f"/v1/agents/{uuid.uuid4()}", json={"name": "renamed"})
    assert _refusal(response, 428).startswith("If-Match:")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "path", "template"),
    [("PUT", f"/v1/agents/{uuid.uuid4()}", "/v1/agents/{id}"), ("DELETE", "/v1/agents", "/v1/agents")],
)
async def test_a_wrong_method_is_405_with_allow_listing_the_paths_methods(
    world: EdgeWorld, method: str, path: str, template: str
) -> None:
    async with world.client() as client:
        response = await client.request(method, path)
    assert response.status_code == 405, response.text
    documented = sorted({name.upper() for name in DOCUMENT["paths"][template]} | {"HEAD"})
    assert response.headers["allow"] == ", ".join(documented)


@pytest.mark.integration
async def test_a_wrong_method_on_the_document_itself_is_405_allowing_get(world: EdgeWorld) -> None:
    async with world.client() as client:
        response = await client.post("/v1/openapi.json")
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == "GET, HEAD"
