"""Tool server rules: what a registration must have, who sees a server, when it may go."""

from __future__ import annotations

import uuid

from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import AlreadyExists, InvalidArgument, NotFound, StaleEtag
from services.runtime.ids import new_etag, parse_id
from services.runtime.paging import decode_page_token, filter_digest, page_size, time_key, time_page
from services.runtime.principal import Principal
from services.tool_gateway.server_store import ServerStore

REQUIRED_ON_CREATE = ("name", "url")


def not_found(server_id: str) -> NotFound:
    # Another tenant's server is reported exactly like a missing one: existence is not revealed.
    return NotFound(f"tool server {server_id} not found")


def _audited(principal: Principal, action: str, server_id: str, **detail: str) -> AuditEvent:
    return AuditEvent(Who.of(principal), action, f"tool-server/{server_id}", detail=detail)


class ToolServers:
    def __init__(self, store: ServerStore) -> None:
        self._store = store

    async def create(self, principal: Principal, draft: pb.ToolServer) -> pb.ToolServer:
        missing = [name for name in REQUIRED_ON_CREATE if not getattr(draft, name)]
        if missing:
            raise InvalidArgument("; ".join(f"tool_server.{name}: value is required" for name in missing))
        server = pb.ToolServer(
            # Output-only fields come from the server and the caller's principal, never from the body.
            id=str(uuid.uuid4()),
            tenant_id=principal.tenant_id,
            name=draft.name,
            url=draft.url,
            version_label=draft.version_label,
            auth=draft.auth or pb.UPSTREAM_AUTH_NONE,
            etag=new_etag(),
        )
        stored = await self._store.insert(
            server, _audited(principal, audit.TOOL_SERVER_CREATE, server.id, name=server.name, url=server.url)
        )
        if stored is None:
            raise AlreadyExists(f"tool_server.name: the tenant already has a tool server named {server.name}")
        return stored

    async def get(self, principal: Principal, server_id: str) -> pb.ToolServer:
        server = await self._store.get(principal.tenant_id, parse_id(server_id, "id"))
        if server is None:
            raise not_found(server_id)
        return server

    async def list(
        self, principal: Principal, request: pb.ListToolServersRequest
    ) -> pb.ListToolServersResponse:
        digest = filter_digest("tool-servers", principal.tenant_id)
        after = time_key(decode_page_token(request.page_token, digest))
        size = page_size(request.page_size)
        found = await self._store.page(principal.tenant_id, after, size + 1)
        servers, next_page_token = time_page(found, size, digest)
        return pb.ListToolServersResponse(tool_servers=servers, next_page_token=next_page_token)

    async def delete(self, principal: Principal, server_id: str, etag: str) -> None:
        outcome = await self._store.delete(
            principal.tenant_id,
            parse_id(server_id, "id"),
            etag,
            _audited(principal, audit.TOOL_SERVER_DELETE, server_id),
        )
        if outcome == "missing":
            raise not_found(server_id)
        if outcome == "stale":
            raise StaleEtag(
                f"tool server {server_id} changed since it was read (etag mismatch); read it again"
            )
