"""The service-held scopes (`agents:generate`, `usage:write`): only internal clients are registered
with them, and no token issued to a user signing in or through a user-facing client carries them,
even from a client row that holds them (registered before this rule)."""

from __future__ import annotations

import grpc
import pytest
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from services.token.scopes import SERVICE_HELD
from tests.token.harness import (
    ACCESS_TOKEN_TYPE,
    EXCHANGE_GRANT,
    USER_FACING_CLASSES,
    USER_PASSWORD,
    RegisteredClient,
    TokenHarness,
    password_grant,
    rpc_error,
)

pytestmark = pytest.mark.integration

HELD = " ".join(sorted(SERVICE_HELD))
USER_FACING = USER_FACING_CLASSES


def _sign_in(client: RegisteredClient, scope: str = "") -> pb.IssueTokenRequest:
    return password_grant(client.client_id, client.client_secret, scope=scope)


async def test_no_user_facing_client_is_registered_with_them(token_service: TokenHarness) -> None:
    await token_service.tenant("acme")
    for name, client_class in USER_FACING.items():
        for scope in ("agents:generate", "usage:write", f"conversations:read {HELD}"):
            refused = await rpc_error(
                token_service.register(client_class=client_class, tenant_id="acme", scope=scope)
            )
            assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, (name, scope)
            assert refused.details.startswith("invalid_client_metadata: only internal clients may hold"), name
    assert await token_service.register(scope=f"conversations:read {HELD}")  # an internal one may


async def test_no_token_through_a_user_facing_client_carries_them(token_service: TokenHarness) -> None:
    await token_service.tenant("acme")
    await token_service.user("acme", "ada", USER_PASSWORD)
    app = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        tenant_id="acme",
        grant_types=["password", "client_credentials", EXCHANGE_GRANT],
        scope="conversations:read",
    )
    # A client row holding them anyway, as one registered before the rule does.
    await token_service.db.execute(
        "UPDATE token_clients SET scopes = $2 WHERE client_id = $1",
        app.client_id,
        ["conversations:read", *sorted(SERVICE_HELD)],
    )

    user = await token_service.stub.IssueToken(_sign_in(app))
    assert user.scope == "conversations:read"
    own = await token_service.client_token(app)
    assert own.scope == "conversations:read"
    exchanged = await token_service.stub.ExchangeToken(
        pb.ExchangeTokenRequest(
            client_id=app.client_id,
            client_secret=app.client_secret,
            subject_token=own.access_token,
            subject_token_type=ACCESS_TOKEN_TYPE,
        )
    )
    assert exchanged.scope == "conversations:read"
    for scope in SERVICE_HELD:
        asked = await rpc_error(token_service.stub.IssueToken(_sign_in(app, scope)))
        assert asked.details.startswith("invalid_scope: "), scope
        asked = await rpc_error(token_service.client_token(app, scope))
        assert asked.details.startswith("invalid_scope: "), scope


async def test_a_user_signing_in_through_an_internal_client_gets_none_either(
    token_service: TokenHarness,
) -> None:
    await token_service.tenant("acme")
    await token_service.user("acme", "ada", USER_PASSWORD)
    cli = await token_service.register(grant_types=["password"], scope=f"conversations:read {HELD}")
    assert (await token_service.stub.IssueToken(_sign_in(cli))).scope == "conversations:read"
    asked = await rpc_error(token_service.stub.IssueToken(_sign_in(cli, "usage:write")))
    assert asked.details.startswith("invalid_scope: ")
