"""ExchangeToken (RFC 8693): nested `act`, narrowing only, one tenant, bounded depth, strict inputs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from tests.token.harness import (
    ACCESS_TOKEN_TYPE,
    EXCHANGE_GRANT,
    USER_PASSWORD,
    RegisteredClient,
    TokenHarness,
    password_grant,
    rpc_error,
)

pytestmark = pytest.mark.integration

SCOPES = "conversations:read conversations:write usage:read"


@dataclass(frozen=True)
class Parties:
    app: RegisteredClient
    exchanger: RegisteredClient
    user_token: str
    user_id: str
    agent_metadata: tuple[tuple[str, str]]


@pytest.fixture
async def parties(token_service: TokenHarness) -> Parties:
    await token_service.tenant("acme")
    user = await token_service.user("acme", "ada", USER_PASSWORD)
    app = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        tenant_id="acme",
        grant_types=["password"],
        scope=SCOPES,
    )
    signed_in = await token_service.stub.IssueToken(password_grant(app.client_id, app.client_secret))
    exchanger = await token_service.register(grant_types=[EXCHANGE_GRANT], scope=SCOPES)
    return Parties(app, exchanger, signed_in.access_token, user.user_id, await token_service.admin_metadata())


async def agent_token(
    token_service: TokenHarness,
    parties: Parties,
    tenant_id: str = "acme",
    scope: str = "",
    ttl_seconds: int = 3600,
) -> tuple[str, str]:
    agent_id = str(uuid.uuid4())
    minter = await token_service.register(scope=f"{SCOPES} macp:agent-token")
    bearer = await token_service.client_token(minter, "macp:agent-token", ["urn:macp:service:token"])
    response = await token_service.stub.IssueAgentToken(
        pb.IssueAgentTokenRequest(
            agent_id=agent_id,
            owner_id=parties.user_id,
            tenant_id=tenant_id,
            capabilities=["finance"],
            scope=scope,
            ttl=Duration(seconds=ttl_seconds),
        ),
        metadata=(("authorization", f"Bearer {bearer.access_token}"),),
    )
    return agent_id, response.access_token


def exchange(
    parties: Parties, subject: str, actor: str = "", scope: str = "", audience: tuple[str, ...] = ()
) -> pb.ExchangeTokenRequest:
    return pb.ExchangeTokenRequest(
        client_id=parties.exchanger.client_id,
        client_secret=parties.exchanger.client_secret,
        subject_token=subject,
        subject_token_type=ACCESS_TOKEN_TYPE,
        actor_token=actor,
        actor_token_type=ACCESS_TOKEN_TYPE if actor else "",
        scope=scope,
        audience=list(audience),
    )


async def test_exchange_nests_the_actor_and_narrows_scopes(
    token_service: TokenHarness, parties: Parties
) -> None:
    agent_id, actor = await agent_token(
        token_service, parties, scope="conversations:read conversations:write"
    )
    response = await token_service.stub.ExchangeToken(
        exchange(parties, parties.user_token, actor, audience=("urn:macp:service:conversation",))
    )

    assert response.issued_token_type == ACCESS_TOKEN_TYPE
    assert response.token_type == "Bearer"
    # subject (3 scopes) ∩ actor (2) ∩ exchanging client (3)
    assert response.scope == "conversations:read conversations:write"
    claims = await token_service.verified(response.access_token)
    assert claims["sub"] == parties.user_id == claims["user_id"]
    assert claims["tenant_id"] == "acme"
    assert claims["aud"] == "urn:macp:service:conversation"
    assert claims["client_id"] == parties.exchanger.client_id
    assert claims["act"] == {"sub": agent_id, "client_id": claims["act"]["client_id"], "agent_id": agent_id}
    assert [(a.type, a.id) for a in response.actor_chain] == [(principal_pb2.ACTOR_TYPE_AGENT, agent_id)]

    narrowed = await token_service.stub.ExchangeToken(
        exchange(parties, parties.user_token, actor, scope="conversations:read")
    )
    assert narrowed.scope == "conversations:read"


async def test_exchange_refuses_widening(token_service: TokenHarness, parties: Parties) -> None:
    _, actor = await agent_token(token_service, parties, scope="conversations:read")
    error = await rpc_error(
        token_service.stub.ExchangeToken(
            exchange(parties, parties.user_token, actor, scope="conversations:write")
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "invalid_scope: not grantable here: conversations:write"


async def test_exchange_refuses_an_actor_of_another_tenant(
    token_service: TokenHarness, parties: Parties
) -> None:
    await token_service.tenant("globex")
    _, foreign_actor = await agent_token(token_service, parties, tenant_id="globex")
    error = await rpc_error(
        token_service.stub.ExchangeToken(exchange(parties, parties.user_token, foreign_actor))
    )
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.details == "access_denied: the subject and the actor belong to different tenants"


async def test_delegation_depth_is_bounded(token_service: TokenHarness, parties: Parties) -> None:
    first_id, first = await agent_token(token_service, parties)
    second_id, second = await agent_token(token_service, parties)
    _, third = await agent_token(token_service, parties)

    once = await token_service.stub.ExchangeToken(exchange(parties, parties.user_token, first))
    twice = await token_service.stub.ExchangeToken(exchange(parties, once.access_token, second))
    claims = await token_service.verified(twice.access_token)
    assert claims["sub"] == parties.user_id
    assert claims["act"]["sub"] == second_id
    assert claims["act"]["act"]["sub"] == first_id
    assert "act" not in claims["act"]["act"]
    assert [a.id for a in twice.actor_chain] == [second_id, first_id]

    error = await rpc_error(token_service.stub.ExchangeToken(exchange(parties, twice.access_token, third)))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.details == "access_denied: delegation depth 3 exceeds the maximum of 2"


async def test_exchange_without_actor_only_narrows(token_service: TokenHarness, parties: Parties) -> None:
    response = await token_service.stub.ExchangeToken(
        exchange(parties, parties.user_token, scope="usage:read")
    )
    claims = await token_service.verified(response.access_token)
    assert claims["scope"] == "usage:read"
    assert "act" not in claims


async def test_exchange_never_outlives_its_inputs(token_service: TokenHarness, parties: Parties) -> None:
    _, actor = await agent_token(token_service, parties, ttl_seconds=60)
    actor_exp = (await token_service.verified(actor))["exp"]
    response = await token_service.stub.ExchangeToken(exchange(parties, parties.user_token, actor))
    claims = await token_service.verified(response.access_token)
    assert claims["exp"] == actor_exp  # not the 15 minutes an access token otherwise gets
    assert response.expires_in <= 60


async def test_exchange_refuses_unknown_targets_and_bad_inputs(
    token_service: TokenHarness, parties: Parties
) -> None:
    error = await rpc_error(
        token_service.stub.ExchangeToken(exchange(parties, parties.user_token, audience=("mcp-servers",)))
    )
    assert error.details.startswith("invalid_target:")

    tampered = parties.user_token[:-4] + ("AAAA" if not parties.user_token.endswith("AAAA") else "BBBB")
    error = await rpc_error(token_service.stub.ExchangeToken(exchange(parties, tampered)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("invalid_request: subject_token is not a valid")

    subject = await token_service.verified(parties.user_token)
    app = parties.app
    revoke = pb.RevokeRequest(
        token_id=subject["jti"], client_id=app.client_id, client_secret=app.client_secret
    )
    await token_service.stub.Revoke(revoke)
    error = await rpc_error(token_service.stub.ExchangeToken(exchange(parties, parties.user_token)))
    assert error.details.startswith("invalid_request: subject_token")


async def test_exchange_needs_the_token_exchange_grant(token_service: TokenHarness, parties: Parties) -> None:
    plain = await token_service.register(scope=SCOPES)
    request = exchange(parties, parties.user_token)
    request.client_id, request.client_secret = plain.client_id, plain.client_secret
    error = await rpc_error(token_service.stub.ExchangeToken(request))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.details.startswith("unauthorized_client:")


async def test_a_tenant_client_exchanges_only_its_tenant_tokens(
    token_service: TokenHarness, parties: Parties
) -> None:
    await token_service.tenant("globex")
    outsider = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_PARTNER,
        tenant_id="globex",
        grant_types=[EXCHANGE_GRANT],
        scope=SCOPES,
    )
    request = exchange(parties, parties.user_token)
    request.client_id, request.client_secret = outsider.client_id, outsider.client_secret
    error = await rpc_error(token_service.stub.ExchangeToken(request))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.details == "access_denied: the client and the subject belong to different tenants"


async def test_an_internal_client_adds_the_service_held_scopes_a_user_never_holds(
    token_service: TokenHarness, parties: Parties
) -> None:
    # The orchestrator's shape: an internal client holding agents:generate and usage:write
    # exchanges the user's token; the user never held either, the result carries them.
    service_scopes = f"{SCOPES} agents:generate usage:write"
    orchestrator = await token_service.register(grant_types=[EXCHANGE_GRANT], scope=service_scopes)
    as_orchestrator = Parties(
        parties.app, orchestrator, parties.user_token, parties.user_id, parties.agent_metadata
    )
    metered = await token_service.stub.ExchangeToken(
        exchange(as_orchestrator, parties.user_token, audience=("urn:macp:service:metering",))
    )
    assert set(metered.scope.split()) == {*SCOPES.split(), "agents:generate", "usage:write"}
    claims = await token_service.verified(metered.access_token)
    assert claims["tenant_id"] == "acme"
    assert claims["sub"] == parties.user_id

    # With an actor, only what the actor holds too: an agent token without usage:write.
    bearer = await token_service.client_token(
        await token_service.register(scope=f"{service_scopes} macp:agent-token"),
        "macp:agent-token",
        ["urn:macp:service:token"],
    )
    minted = await token_service.stub.IssueAgentToken(
        pb.IssueAgentTokenRequest(
            agent_id=str(uuid.uuid4()),
            owner_id=parties.user_id,
            tenant_id="acme",
            scope="conversations:read agents:generate",
        ),
        metadata=(("authorization", f"Bearer {bearer.access_token}"),),
    )
    actor = minted.access_token
    delegated = await token_service.stub.ExchangeToken(
        exchange(as_orchestrator, parties.user_token, actor, audience=("urn:macp:service:agent-proxy",))
    )
    assert set(delegated.scope.split()) == {"conversations:read", "agents:generate"}

    # The same request from a client that does not hold them gets none: nothing is widened.
    plain = await token_service.stub.ExchangeToken(exchange(parties, parties.user_token))
    assert "usage:write" not in plain.scope.split()
    assert "agents:generate" not in plain.scope.split()


async def test_a_non_internal_client_never_adds_service_held_scopes(
    token_service: TokenHarness, parties: Parties
) -> None:
    partner = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_PARTNER,
        tenant_id="acme",
        grant_types=[EXCHANGE_GRANT],
        scope=SCOPES,
    )
    # Registration refuses it the scope; a row holding it from before is what is left to test.
    await token_service.db.execute(
        "UPDATE token_clients SET scopes = scopes || '{usage:write}' WHERE client_id = $1", partner.client_id
    )
    as_partner = Parties(parties.app, partner, parties.user_token, parties.user_id, parties.agent_metadata)
    response = await token_service.stub.ExchangeToken(exchange(as_partner, parties.user_token))
    assert "usage:write" not in response.scope.split()


async def test_an_internal_client_exchanges_for_an_outside_resource_with_a_mesh_service_acting(
    token_service: TokenHarness, parties: Parties
) -> None:
    """The tool gateway's exchange: the user's token for an upstream MCP server's URL (RFC 8707),
    with the gateway's own token (an internal client of the platform's tenant) as the actor."""
    gateway = await token_service.register(scope=SCOPES)
    own = await token_service.client_token(gateway, audience=["urn:macp:service:token"])
    request = exchange(parties, parties.user_token, own.access_token, scope="conversations:read")
    request.resource.append("https://tools.example.test/mcp")
    reply = await token_service.stub.ExchangeToken(request)
    claims = await token_service.verified(reply.access_token)
    assert claims["aud"] in ("https://tools.example.test/mcp", ["https://tools.example.test/mcp"])
    assert (claims["sub"], claims["tenant_id"]) == (parties.user_id, "acme")
    assert claims["act"] == {"sub": gateway.client_id, "client_id": gateway.client_id}


async def test_an_outside_resource_is_no_target_for_a_consumer_client_or_a_fragment(
    token_service: TokenHarness, parties: Parties
) -> None:
    consumer = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        tenant_id="acme",
        grant_types=[EXCHANGE_GRANT],
        scope=SCOPES,
    )
    request = exchange(parties, parties.user_token)
    request.client_id, request.client_secret = consumer.client_id, consumer.client_secret
    request.resource.append("https://tools.example.test/mcp")
    error = await rpc_error(token_service.stub.ExchangeToken(request))
    assert error.details.startswith("invalid_target: a consumer client gets urn:macp:edge only")
    fragment = exchange(parties, parties.user_token)
    fragment.resource.append("https://tools.example.test/mcp#x")
    error = await rpc_error(token_service.stub.ExchangeToken(fragment))
    assert error.details.startswith("invalid_target: unknown audience")
