"""The local administrator `macp up` seeds on every start, so the CLI can sign in at once.

Seeding follows the token service's own bootstrap (tests/token/harness.py `admin_metadata`):
register an INTERNAL client with the initial access token, take a client-credentials token for
the token service with `macp:admin`, then create the `local` tenant and its `admin` user, and
register a public CLI client (password and refresh_token grants). What it made is kept in
`<data_dir>/local-admin.json` (mode 0600) and reused on the next start: a stored client that still
authenticates is kept, a tenant or user that already exists is left alone, so restarting never
duplicates anything. The CLI (services/cli) reads the same file for its admin credentials.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.auth.settings import USER_SCOPES

TOKEN_AUDIENCE = "urn:macp:service:token"
ADMIN_SCOPE = "macp:admin"
LOCAL_TENANT = "local"
LOCAL_USERNAME = "admin"
CLI_GRANTS = ("password", "refresh_token")
RPC_TIMEOUT_SECONDS = 10.0
FILE_NAME = "local-admin.json"
TOKEN_MODULE = "services.token"  # the registry module `macp up` runs for the token service
UNAVAILABLE_RETRY_SECONDS = 10.0

Metadata = tuple[tuple[str, str], ...]


class SeedError(Exception):
    """Seeding failed; the message says why in one line."""


@dataclass(frozen=True)
class LocalAdmin:
    """The seeded credentials, as stored in `<data_dir>/local-admin.json`."""

    admin_client_id: str
    admin_client_secret: str
    tenant_id: str
    username: str
    password: str
    cli_client_id: str

    @classmethod
    def from_json(cls, document: Any) -> LocalAdmin | None:
        if not isinstance(document, dict):
            return None
        try:
            return cls(**{name: str(document[name]) for name in cls.__dataclass_fields__})
        except KeyError:
            return None


def admin_file(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def load(data_dir: Path) -> LocalAdmin | None:
    """The stored credentials, or None when there are none (or they cannot be read)."""
    try:
        return LocalAdmin.from_json(json.loads(admin_file(data_dir).read_text()))
    except (OSError, ValueError):
        return None


def save(data_dir: Path, admin: LocalAdmin) -> None:
    """Write the credentials atomically, readable by this user only."""
    path = admin_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(asdict(admin), out, indent=2, sort_keys=True)
    os.chmod(scratch, 0o600)  # an older scratch file may have had other bits
    os.replace(scratch, path)


def rpc_message(error: grpc.aio.AioRpcError) -> str:
    """One line for a failed call: the service's details, or the status name."""
    details = (error.details() or "").strip().splitlines()
    return details[0] if details else error.code().name.lower()


def oauth_code(error: grpc.aio.AioRpcError) -> str:
    """The OAuth error the token service names at the start of its details (`invalid_client: ...`)."""
    return rpc_message(error).split(":", 1)[0].strip()


async def admin_token(stub: pb_grpc.TokenServiceStub, client_id: str, client_secret: str) -> Metadata:
    """`authorization: Bearer ...` for the token service's admin RPCs (client credentials)."""
    response: pb.IssueTokenResponse = await stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id=client_id,
            client_secret=client_secret,
            scope=ADMIN_SCOPE,
            audience=[TOKEN_AUDIENCE],
        ),
        timeout=RPC_TIMEOUT_SECONDS,
    )
    return (("authorization", f"Bearer {response.access_token}"),)


async def _register(
    stub: pb_grpc.TokenServiceStub, initial_access_token: str, metadata: pb.ClientMetadata
) -> pb.RegisterClientResponse:
    response: pb.RegisterClientResponse = await stub.RegisterClient(
        pb.RegisterClientRequest(initial_access_token=initial_access_token, metadata=metadata),
        timeout=RPC_TIMEOUT_SECONDS,
    )
    return response


@dataclass
class SeedReport:
    """What one seeding did, for `macp up` to print."""

    admin: LocalAdmin
    created: list[str]
    warnings: list[str]


async def _seed(data_dir: Path, mesh_address: str, initial_access_token: str) -> SeedReport:
    stored = load(data_dir)
    created: list[str] = []
    warnings: list[str] = []
    async with grpc.aio.insecure_channel(mesh_address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = pb_grpc.TokenServiceStub(channel)

        # 1. The INTERNAL admin client: keep the stored one while it still authenticates.
        admin_id, admin_secret = (stored.admin_client_id, stored.admin_client_secret) if stored else ("", "")
        metadata: Metadata | None = None
        if admin_id:
            try:
                metadata = await admin_token(stub, admin_id, admin_secret)
            except grpc.aio.AioRpcError as error:
                if oauth_code(error) not in ("invalid_client", "unauthorized_client", "invalid_scope"):
                    raise
        if metadata is None:
            registered = await _register(
                stub,
                initial_access_token,
                pb.ClientMetadata(
                    client_name="macp local admin",
                    client_class=principal_pb2.CLIENT_CLASS_INTERNAL,
                    grant_types=["client_credentials"],
                    scope=ADMIN_SCOPE,
                ),
            )
            admin_id, admin_secret = registered.client_id, registered.client_secret
            metadata = await admin_token(stub, admin_id, admin_secret)
            created.append("admin client")

        # 2. The `local` tenant.
        try:
            await stub.CreateTenant(
                pb.CreateTenantRequest(tenant_id=LOCAL_TENANT, tier=principal_pb2.TIER_PRO),
                metadata=metadata,
                timeout=RPC_TIMEOUT_SECONDS,
            )
            created.append(f"tenant {LOCAL_TENANT}")
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

        # 3. The local admin user, with a generated password kept beside the clients.
        password = stored.password if stored and stored.username == LOCAL_USERNAME else ""
        password = password or secrets.token_urlsafe(18)
        try:
            await stub.CreateUser(
                pb.CreateUserRequest(
                    tenant_id=LOCAL_TENANT, username=LOCAL_USERNAME, password=password, admin=True
                ),
                metadata=metadata,
                timeout=RPC_TIMEOUT_SECONDS,
            )
            created.append(f"user {LOCAL_USERNAME}")
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

        # 4. The public CLI client: keep the stored one if the user can sign in with it.
        cli_id = stored.cli_client_id if stored else ""
        if cli_id and not await _signs_in(stub, cli_id, password, warnings):
            cli_id = ""
        if not cli_id:
            registered = await _register(
                stub,
                initial_access_token,
                pb.ClientMetadata(
                    client_name="macp cli",
                    client_class=principal_pb2.CLIENT_CLASS_INTERNAL,
                    grant_types=list(CLI_GRANTS),
                    token_endpoint_auth_method="none",
                    # What a signed-in user may do through the edge; without it, tokens carry none.
                    scope=" ".join(USER_SCOPES),
                ),
            )
            cli_id = registered.client_id
            created.append("cli client")
            await _signs_in(stub, cli_id, password, warnings)

    admin = LocalAdmin(
        admin_client_id=admin_id,
        admin_client_secret=admin_secret,
        tenant_id=LOCAL_TENANT,
        username=LOCAL_USERNAME,
        password=password,
        cli_client_id=cli_id,
    )
    if admin != stored:
        save(data_dir, admin)
    return SeedReport(admin, created, warnings)


async def _signs_in(
    stub: pb_grpc.TokenServiceStub, client_id: str, password: str, warnings: list[str]
) -> bool:
    """True when the password grant works for the local admin with this client. False when the
    client is unknown (register a new one); a wrong password is a warning, not a new client."""
    try:
        await stub.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_PASSWORD,
                client_id=client_id,
                username=LOCAL_USERNAME,
                password=password,
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    except grpc.aio.AioRpcError as error:
        if oauth_code(error) == "invalid_grant":
            warnings.append(
                f"user {LOCAL_USERNAME} exists but its password is not the one kept in the data dir; "
                "log in with the password you gave it"
            )
            return True
        if oauth_code(error) in ("invalid_client", "unauthorized_client"):
            return False
        raise
    return True


def seed(data_dir: Path, mesh_address: str, initial_access_token: str) -> SeedReport:
    """Seed (or check) the local administrator through the token service at `mesh_address`."""
    if not initial_access_token:
        raise SeedError("MACP_TOKEN_INITIAL_ACCESS_TOKEN is empty: cannot register the local admin client")
    deadline = time.monotonic() + UNAVAILABLE_RETRY_SECONDS
    while True:
        try:
            return asyncio.run(_seed(data_dir, mesh_address, initial_access_token))
        except grpc.aio.AioRpcError as error:
            # Envoy may not have seen the token service healthy yet: retry that, briefly.
            if error.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                time.sleep(0.3)
                continue
            raise SeedError(f"seeding the local admin failed: {rpc_message(error)}") from None
