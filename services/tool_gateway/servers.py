"""Tool server rules: what a registration must have, who sees a server, when it may go.

A tenant registers servers of its own. An operator (scope `macp:admin`) registers platform-wide
ones (`platform: true`), which every tenant lists, gets and calls but never removes; in a tenant
that has a server of the same name, the tenant's own takes the name (server_store.py). A
registration's credential secret is sealed before it is stored and never read back into a reply
or an audit row.
"""

from __future__ import annotations

import uuid

from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, StaleEtag
from services.runtime.ids import new_etag, parse_id
from services.runtime.paging import decode_page_token, filter_digest, page_size, time_key, time_page
from services.runtime.principal import Principal
from services.tool_gateway.registration_auth import checked_auth
from services.tool_gateway.server_store import PLATFORM, ServerStore
from services.tool_gateway.upstream_secrets import UpstreamSecrets

REQUIRED_ON_CREATE = ("name", "url")
# The operator's scope (the token service's administrators): platform-wide servers need it.
OPERATOR_SCOPE = "macp:admin"


def not_found(server_id: str) -> NotFound:
    # Another tenant's server is reported exactly like a missing one: existence is not revealed.
    return NotFound(f"tool server {server_id} not found")


def _audited(principal: Principal, action: str, server_id: str, **detail: str) -> AuditEvent:
    return AuditEvent(Who.of(principal), action, f"tool-server/{server_id}", detail=detail)


def _owner(principal: Principal, draft: pb.ToolServer) -> str:
    """The tenant the new server belongs to: the caller's, or PLATFORM for an operator's platform
    server."""
    if draft.platform:
        if OPERATOR_SCOPE not in principal.scopes:
            raise PermissionDenied(
                f"tool_server.platform: a platform-wide server is registered only with scope {OPERATOR_SCOPE}"
            )
        return PLATFORM
    if principal.tenant_id == PLATFORM:
        # A caller of no tenant (an internal client) would otherwise register a platform server
        # without saying so.
        raise InvalidArgument(
            "tool_server.platform: the caller belongs to no tenant; only a platform-wide server "
            f"(platform: true, scope {OPERATOR_SCOPE}) can be registered"
        )
    return principal.tenant_id


class ToolServers:
    def __init__(self, store: ServerStore, secrets: UpstreamSecrets) -> None:
        self._store = store
        self._secrets = secrets

    async def create(self, principal: Principal, draft: pb.ToolServer) -> pb.ToolServer:
        missing = [name for name in REQUIRED_ON_CREATE if not getattr(draft, name)]
        if missing:
            raise InvalidArgument("; ".join(f"tool_server.{name}: value is required" for name in missing))
        tenant_id = _owner(principal, draft)
        auth = checked_auth(draft)
        server = pb.ToolServer(
            # Output-only fields come from the server and the caller's principal, never from the body.
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            name=draft.name,
            url=draft.url,
            version_label=draft.version_label,
            auth=draft.auth or pb.UPSTREAM_AUTH_NONE,
            etag=new_etag(),
            platform=tenant_id == PLATFORM,
        )
        if auth.static is not None:
            server.static_credential.CopyFrom(auth.static)
        if auth.oauth is not None:
            server.client_credentials.CopyFrom(auth.oauth)
        sealed = self._secrets.seal(server.id, server.auth, auth.secret) if auth.secret else None
        detail = {"name": server.name, "url": server.url, "auth": pb.UpstreamAuth.Name(server.auth)}
        if server.platform:
            detail["platform"] = "true"
        stored = await self._store.insert(
            server, sealed, _audited(principal, audit.TOOL_SERVER_CREATE, server.id, **detail)
        )
        if stored is None:
            owner = "the platform" if server.platform else "the tenant"
            raise AlreadyExists(f"tool_server.name: {owner} already has a tool server named {server.name}")
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
            operator=OPERATOR_SCOPE in principal.scopes,
        )
        if outcome == "missing":
            raise not_found(server_id)
        if outcome == "platform":
            raise PermissionDenied(
                f"id: tool server {server_id} is platform-wide; only an operator (scope "
                f"{OPERATOR_SCOPE}) removes it"
            )
        if outcome == "stale":
            raise StaleEtag(
                f"tool server {server_id} changed since it was read (etag mismatch); read it again"
            )
