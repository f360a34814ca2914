"""The secrets of upstream credentials at rest: a STATIC server's header value, a CLIENT_CREDENTIALS
server's client secret.

Each is sealed (services/runtime/sealing.py, AES-256-GCM) under `MACP_TOOL_GATEWAY_SEALING_KEY`,
with the server's id and the kind of secret as associated data, so a sealed value copied to
another row does not open. The key is required once it is used: a registration with a secret is
refused while it is unset, and a gateway whose key is missing or does not open the stored secrets
does not start (`check`), rather than fail each call later. Opened secrets are kept in the process
by (server id, etag), the etag changing with every write of the registration.
"""

from __future__ import annotations

import uuid

from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime.errors import FailedPrecondition
from services.runtime.sealing import GENERATE_HINT, Sealer, SealError
from services.runtime.settings import SettingsError
from services.tool_gateway.server_store import ServerStore
from services.tool_gateway.settings import SEALING_KEY
from services.tool_gateway.upstream import UpstreamFailure

_KINDS = {pb.UPSTREAM_AUTH_STATIC: "static", pb.UPSTREAM_AUTH_CLIENT_CREDENTIALS: "client-secret"}


def associated_data(server_id: str, auth: pb.UpstreamAuth.ValueType) -> bytes:
    """What binds a sealed secret to its place: the server's id and which secret it is."""
    return f"tool-server/{server_id}/{_KINDS[auth]}".encode()


class UpstreamSecrets:
    def __init__(self, store: ServerStore, key: bytes | None) -> None:
        self._store = store
        self._sealer = None if key is None else Sealer(key)
        self._opened: dict[tuple[str, str], str] = {}

    def seal(self, server_id: str, auth: pb.UpstreamAuth.ValueType, secret: str) -> bytes:
        if self._sealer is None:
            raise FailedPrecondition(
                f"tool_server.auth: this gateway keeps no credentials: {SEALING_KEY} is not set "
                f"(set it on every gateway process to 32 random bytes in base64url: {GENERATE_HINT})"
            )
        return self._sealer.seal(secret.encode(), associated_data(server_id, auth))

    async def secret(self, server: pb.ToolServer) -> str:
        """The opened secret of `server`; UpstreamFailure("credentials") when it cannot be had."""
        key = (server.id, server.etag)
        opened = self._opened.get(key)
        if opened is not None:
            return opened
        sealed = await self._store.sealed_secret(server.tenant_id, uuid.UUID(server.id))
        if sealed is None or self._sealer is None:
            raise UpstreamFailure(
                "credentials",
                f"the credential of tool server {server.name} cannot be opened: "
                + ("it has none stored" if sealed is None else f"{SEALING_KEY} is not set"),
            )
        try:
            opened = self._sealer.open(sealed, associated_data(server.id, server.auth)).decode()
        except SealError:
            raise UpstreamFailure(
                "credentials",
                f"the credential of tool server {server.name} does not open with {SEALING_KEY}",
            ) from None
        self._forget_others(server.id)
        self._opened[key] = opened
        return opened

    def _forget_others(self, server_id: str) -> None:
        """Only one registration of a server is current: older etags' secrets go."""
        for key in [key for key in self._opened if key[0] == server_id]:
            del self._opened[key]

    async def check(self) -> None:
        """At start: every stored secret opens with the configured key; SettingsError otherwise (one
        line naming the setting and the first server whose secret it fails, never a value)."""
        stored = await self._store.sealed_secrets()
        if not stored:
            return
        if self._sealer is None:
            raise SettingsError(
                f"{SEALING_KEY} is not set, but {len(stored)} tool server(s) keep sealed credentials; "
                "set it to the key they were sealed with"
            )
        for server_id, name, auth, sealed in stored:
            try:
                self._sealer.open(sealed, associated_data(server_id, auth))
            except (SealError, KeyError):
                raise SettingsError(
                    f"{SEALING_KEY} does not open the credential of tool server {name} ({server_id}) "
                    "stored in Postgres; set it back to the key the credentials were sealed with"
                ) from None
