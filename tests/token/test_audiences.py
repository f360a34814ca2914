"""Who may hold a service audience: MACP's internal clients, for themselves (client credentials) or
through their exchange of a user's token; never a user's sign-in, never a user-facing client."""

from __future__ import annotations

import grpc
import pytest
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from tests.token.harness import (
    ACCESS_TOKEN_TYPE,
    EXCHANGE_GRANT,
    USER_FACING_CLASSES,
    USER_PASSWORD,
    RegisteredClient,
    TokenHarness,
    password_grant,
    rpc_error,
    unverified,
)

pytestmark = pytest.mark.integration

CONVERSATION = "urn:macp:service:conversation"
EVERY_SERVICE = [f"urn:macp:service:{name}" for name in ("conversation", "orchestrator", "metering", "token")]
USER_FACING = list(USER_FACING_CLASSES.values())


def _password(client: RegisteredClient, audience: list[str]) -> pb.IssueTokenRequest:
    return password_grant(client.client_id, client.client_secret, audience=audience)


def _exchange(client: RegisteredClient, subject_token: str, audience: list[str]) -> pb.ExchangeTokenRequest:
    return pb.ExchangeTokenRequest(
        client_id=client.client_id,
        client_secret=client.client_secret,
        subject_token=subject_token,
        subject_token_type=ACCESS_TOKEN_TYPE,
        audience=audience,
    )


async def _expect_invalid_target(call: object, case: str) -> None:
    refused = await rpc_error(call)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, case
    assert refused.details.startswith("invalid_target: "), (case, refused.details)


async def test_a_user_facing_client_gets_no_service_audience(token_service: TokenHarness) -> None:
    await token_service.tenant("acme")
    for client_class in USER_FACING:
        client = await token_service.register(
            client_class=client_class, tenant_id="acme", scope="conversations:read"
        )
        case = principal_pb2.ClientClass.Name(client_class)
        await _expect_invalid_target(token_service.client_token(client, audience=[CONVERSATION]), case)
        assert (
            unverified((await token_service.client_token(client)).access_token)[1]["aud"] == "urn:macp:edge"
        )


async def test_a_users_sign_in_gets_no_service_audience_whatever_its_client(
    token_service: TokenHarness,
) -> None:
    await token_service.tenant("acme")
    await token_service.user("acme", "ada", USER_PASSWORD)
    consumer = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        tenant_id="acme",
        grant_types=["password", "refresh_token"],
        scope="conversations:read",
    )
    internal = await token_service.register(grant_types=["password"], scope="conversations:read")
    for client in (consumer, internal):
        for audience in ([CONVERSATION], EVERY_SERVICE, ["urn:macp:edge", CONVERSATION]):
            await _expect_invalid_target(
                token_service.stub.IssueToken(_password(client, audience)), str(audience)
            )

    # A refresh-token family holding a service audience from before gets no more tokens for it.
    signed_in = await token_service.stub.IssueToken(_password(consumer, []))
    await token_service.db.execute("UPDATE token_refresh SET audiences = $1", [CONVERSATION])
    refresh = pb.IssueTokenRequest(
        grant_type=pb.GRANT_TYPE_REFRESH_TOKEN,
        client_id=consumer.client_id,
        client_secret=consumer.client_secret,
        refresh_token=signed_in.refresh_token,
    )
    await _expect_invalid_target(token_service.stub.IssueToken(refresh), "refresh")


async def test_only_an_internal_clients_exchange_reaches_a_service(token_service: TokenHarness) -> None:
    await token_service.tenant("acme")
    await token_service.user("acme", "ada", USER_PASSWORD)
    consumer = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        tenant_id="acme",
        grant_types=["password", EXCHANGE_GRANT],
        scope="conversations:read",
    )
    user = (await token_service.stub.IssueToken(_password(consumer, []))).access_token
    await _expect_invalid_target(
        token_service.stub.ExchangeToken(_exchange(consumer, user, [CONVERSATION])), "consumer"
    )
    assert (await token_service.stub.ExchangeToken(_exchange(consumer, user, []))).access_token

    edge = await token_service.register(grant_types=[EXCHANGE_GRANT], scope="conversations:read")
    exchanged = await token_service.stub.ExchangeToken(_exchange(edge, user, [CONVERSATION]))
    claims = unverified(exchanged.access_token)[1]
    assert (claims["aud"], claims["client_class"], claims["tenant_id"]) == (CONVERSATION, "internal", "acme")
