"""Route definitions: each names its handler and the protobuf messages it takes and returns.

The Starlette routes and the OpenAPI document are both built from this one list, so the document
describes exactly what the edge serves.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from services.edge.schema import JsonSchema, SchemaBuilder
from services.runtime.protos import descriptor_of as descriptor_of  # also imported from here

Handler = Callable[[Request], Awaitable[Response]]

ERROR_SCHEMA: JsonSchema = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "description": "gRPC status name or an edge error code"},
        "message": {"type": "string", "description": "what went wrong, naming the field or setting"},
        "request_id": {"type": ["string", "null"], "description": "the id to quote when reporting it"},
    },
}


# The answer of a request over a rate limit, which any route may get.
RATE_LIMITED: dict[str, Any] = {
    "description": "over a rate limit: try again after Retry-After seconds",
    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


@dataclass(frozen=True)
class Content:
    """A body whose shape an RFC fixes rather than a protobuf message (an OAuth form, a token response).

    name: its `components.schemas` entry; schema: its JSON Schema; media_type: what it is sent as.
    """

    name: str
    schema: JsonSchema
    media_type: str = "application/json"


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from an operation's success answer to an operation on what it answered (the
    agent just created, its conversation's messages), so clients and stateful testers can follow it.

    name: the link's key; operation_id: the target; parameters: the target's parameters, each
    qualified by where it goes (`path.id`, `header.If-Match`), as OpenAPI runtime expressions;
    request_body: members of the target's body, expressions inside (a new agent's id as a
    conversation's participant).
    """

    name: str
    operation_id: str
    parameters: tuple[tuple[str, str], ...] = ()
    request_body: dict[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class ApiRoute:
    """One REST operation.

    body: the message the JSON body decodes into, or its `Content` (None for no body).
    body_required: False when the body may be left out (an empty body means the message's defaults).
    required: fields of the body message (proto names) a request must set, non-zero: the document
        marks them `required` and the handler refuses a body without one (400 naming it).
    not_cleared: fields of a PATCH body (proto names) it may leave out but not set to their zero
        value: the service refuses to clear them (its update's rules), and the document says so.
    response: the message the JSON response encodes, or its `Content` (None for a non-JSON or empty body).
    extra_statuses: other success statuses with the same response (an idempotent retry's 200).
    errors: HTTP statuses this operation can answer besides success, documented with the error shape.
    error: the error shape, when it is not the edge's own `Error` (the OAuth endpoints answer RFC 6749's).
    links: operations a success answer leads to (OpenAPI links).
    """

    method: str
    path: str
    operation_id: str
    summary: str
    handler: Handler
    response: type[Message] | Content | None
    status: int = 200
    extra_statuses: tuple[int, ...] = ()
    body: type[Message] | Content | None = None
    body_required: bool = True
    required: tuple[str, ...] = ()
    not_cleared: tuple[str, ...] = ()
    query: tuple[tuple[str, JsonSchema, str], ...] = ()
    errors: tuple[int, ...] = (400, 404, 503)
    tags: tuple[str, ...] = field(default=())
    error: Content | None = None
    links: tuple[Link, ...] = ()

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


def _content(
    schemas: SchemaBuilder,
    body: type[Message] | Content,
    required: tuple[str, ...] = (),
    not_cleared: tuple[str, ...] = (),
) -> dict[str, Any]:
    if isinstance(body, Content):
        schemas.components[body.name] = body.schema
        return {body.media_type: {"schema": {"$ref": f"#/components/schemas/{body.name}"}}}
    schema = schemas.ref_requiring(descriptor_of(body), required, not_cleared)
    return {"application/json": {"schema": schema}}


def _path_schema(name: str) -> JsonSchema:
    if name == "tenant":
        pattern = "^[A-Za-z0-9][A-Za-z0-9._:@|+-]*$"  # the tenant ids the token service accepts
        return {"type": "string", "minLength": 1, "maxLength": 128, "pattern": pattern}
    return {"type": "string", "format": "uuid"}


def _link(link: Link) -> dict[str, Any]:
    declared: dict[str, Any] = {"operationId": link.operation_id, "parameters": dict(link.parameters)}
    if link.request_body is not None:
        declared["requestBody"] = link.request_body
    return declared


def _rate_limited(route: ApiRoute, error: dict[str, Any]) -> dict[str, Any]:
    """The 429 of `route`: every route counts against the rate limits (services/edge/rate_limits.py),
    whose refusal is the edge's own error shape; a route of another error shape that refuses with
    429 itself (the OAuth endpoints, for a locked-out client) may answer either."""
    if 429 not in route.errors or route.error is None:
        return RATE_LIMITED
    (media_type, own), *_ = error.items()
    either = {"anyOf": [own["schema"], {"$ref": "#/components/schemas/Error"}]}
    return {**RATE_LIMITED, "content": {media_type: {"schema": either}}}


def openapi_document(routes: list[ApiRoute], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`, with schemas derived from their protobuf messages."""
    schemas = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": list(route.tags),
            "parameters": [
                # Every resource id in the API is a UUID (the services refuse anything else with 400);
                # a tenant is named by the id its operator chose.
                {"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
                for name in route.path_params
            ]
            + [
                {"name": name, "in": "query", "required": False, "schema": schema, "description": doc}
                for name, schema, doc in route.query
            ],
            "responses": {},
        }
        if route.body is not None:
            operation["requestBody"] = {
                "required": route.body_required,
                "content": _content(schemas, route.body, route.required, route.not_cleared),
            }
        success: dict[str, Any] = {"description": "success"}
        if route.response is not None:
            success["content"] = _content(schemas, route.response)
        if route.links:
            success["links"] = {link.name: _link(link) for link in route.links}
        for status in (route.status, *route.extra_statuses):
            operation["responses"][str(status)] = success
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        if route.error is not None:
            error = _content(schemas, route.error)
        for status in route.errors:
            operation["responses"][str(status)] = {"description": "error", "content": error}
        operation["responses"]["429"] = _rate_limited(route, error)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    components = dict(sorted(schemas.components.items()))
    components["Error"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }
