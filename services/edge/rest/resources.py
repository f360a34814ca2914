"""The standard methods of a stored resource, as REST handlers, once.

Agents, conversations and tool servers follow the standard methods of resource-oriented design
(AIP-131 to AIP-135): `Create<X>(<x>)`, `Get<X>(id)`, `Update<X>(<x>, update_mask)` and
`Delete<X>(id, etag)` answering with the resource (or nothing). So one set of handlers serves them
all, with the HTTP shape written here only: 201 with `Location` and `ETag` on create, the edge's
read cache before the service on get where the service keeps one (services/edge/rest/
cached_reads.py), a PATCH conditional on If-Match, a DELETE conditional on it too. A resource
names its message, its service (the generated module, the service's name and its stub on the
edge) and the standard methods it has; the RPCs and their request messages are found from the
message's name when the module is loaded, so a contract that strays from the pattern fails at
import, not on a request. (List methods differ by their filters and stay with each resource.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import EdgeContext, edge_context
from services.edge.http import message_response, parse_message
from services.edge.rest.cached_reads import cached
from services.edge.rest.conventions import etag_header, if_match, invalid, patch_request, query

M = TypeVar("M", bound=Message)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _text(resource: Message, name: str) -> str:
    value: str = getattr(resource, name)
    return value


STANDARD_VERBS = ("Create", "Get", "Update", "Delete")


@dataclass(frozen=True)
class StoredResource(Generic[M]):
    """One resource at `/v1/<collection>`; `message` is its type, with an `id` and an `etag`.

    module: the generated `_pb2` module of its service; service: the service's name in it;
    stub: the service's stub on the edge; cache_kind: the read cache's kind, None if it has none;
    verbs: the standard methods it has; required: the fields (proto names) its Create refuses to go
    without, checked here before the call and declared in the create route's body schema."""

    collection: str
    message: type[M]
    module: ModuleType
    service: str
    stub: Callable[[EdgeContext], object]
    cache_kind: str | None = None
    verbs: tuple[str, ...] = STANDARD_VERBS
    required: tuple[str, ...] = ()
    name: str = field(init=False)
    field_name: str = field(init=False)

    def __post_init__(self) -> None:
        name = self.message.DESCRIPTOR.name
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "field_name", _snake(name))
        if not {"id", "etag"} <= set(self.message.DESCRIPTOR.fields_by_name):
            raise TypeError(f"{name} has no id or no etag: it is not a stored resource")
        methods = self.module.DESCRIPTOR.services_by_name[self.service].methods_by_name
        for verb in self.verbs:
            method = methods.get(f"{verb}{name}")
            if method is None or method.input_type.name != f"{verb}{name}Request":
                raise TypeError(f"{self.service} has no standard method {verb}{name}")
        fields = self.message.DESCRIPTOR.fields_by_name
        for required in self.required:
            if required not in fields:
                raise TypeError(f"{name} has no field {required} to require")

    async def _call(self, request: Request, verb: str, **fields: Any) -> Message:
        edge = edge_context(request)
        rpc = getattr(self.stub(edge), f"{verb}{self.name}")
        message = getattr(self.module, f"{verb}{self.name}Request")(**fields)
        reply: Message = await rpc(message, timeout=edge.timeout)
        return reply

    async def _resource(self, request: Request, verb: str, **fields: Any) -> M:
        resource: M = getattr(await self._call(request, verb, **fields), self.field_name)
        return resource

    async def create(self, request: Request) -> Response:
        query(request, ())
        edge = edge_context(request)
        draft = await parse_message(request, self.message(), edge.settings.max_body_bytes)
        self._check_required(draft)
        created = await self._resource(request, "Create", **{self.field_name: draft})
        location = f"/v1/{self.collection}/{_text(created, 'id')}"
        return message_response(created, 201, {"location": location, **etag_header(_text(created, "etag"))})

    def _check_required(self, draft: M) -> None:
        """400 naming every required field the draft leaves unset (proto3: at its zero value; an
        empty list, an enum's UNSPECIFIED)."""
        fields = self.message.DESCRIPTOR.fields_by_name
        missing = [fields[name].json_name for name in self.required if not getattr(draft, name)]
        if missing:
            raise invalid("; ".join(f"{json_name}: value is required" for json_name in missing))

    async def get(self, request: Request) -> Response:
        query(request, ())
        resource_id = request.path_params["id"]
        resource = None
        if self.cache_kind is not None:
            resource = await cached(
                edge_context(request), self.cache_kind, resource_id, self.message.FromString
            )
        if resource is None:
            resource = await self._resource(request, "Get", id=resource_id)
        return message_response(resource, 200, etag_header(_text(resource, "etag")))

    async def update(self, request: Request) -> Response:
        changes, mask = await patch_request(request, edge_context(request), self.message())
        updated = await self._resource(request, "Update", **{self.field_name: changes, "update_mask": mask})
        return message_response(updated, 200, etag_header(_text(updated, "etag")))

    async def delete(self, request: Request) -> Response:
        query(request, ())
        await self._call(request, "Delete", id=request.path_params["id"], etag=if_match(request))
        return Response(status_code=204)
