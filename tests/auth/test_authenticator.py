"""`JwtAuthenticator`: the attack suite through the metadata a caller sends, revocation in real Redis,
scopes, the principal, key rotation, failing closed, and one real grpc.aio server using it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from typing import cast

import grpc
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as proxy_grpc
from macp.common.v1 import principal_pb2

from services.runtime.auth.authenticator import JwtAuthenticator, principal_from_claims
from services.runtime.auth.jwks import JwksCache
from services.runtime.auth.jwt import InvalidToken, verify
from services.runtime.auth.revocation import RevocationChecker, mark_revoked
from services.runtime.auth.verifier import TokenVerifier
from services.runtime.context import RpcContext
from services.runtime.errors import PermissionDenied, Unauthenticated, Unavailable
from services.runtime.principal import Principal, current_principal
from services.stack.config import free_port
from tests.auth.attacks import ATTACKS, Attack, keyring
from tests.auth.forge import AUDIENCE, ISSUER, KID, OTHER_KID, claims, forge, header
from tests.auth.test_jwks import Publisher
from tests.runtime.serving import (
    PROBE_ENVIRON,
    PROBE_SERVICE,
    channel,
    health_status,
    probe_definition,
    running,
)

pytestmark = pytest.mark.integration

APPEND = "/macp.conversation.v1.ConversationService/AppendMessage"
ROTATE = "/macp.token.v1.TokenService/RotateSigningKey"
METERING_ANY = "/macp.metering.v1.MeteringService/*"
SCOPES = {APPEND: "conversation:write", ROTATE: "macp:admin", METERING_ANY: "metering:read"}


class Metadata:
    """What the authenticator reads of a call: its invocation metadata."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self._pairs = pairs

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._pairs


def call(*pairs: tuple[str, str]) -> RpcContext:
    return cast(RpcContext, Metadata(*pairs))


def bearer(token: str) -> RpcContext:
    return call(("authorization", f"Bearer {token}"))


@pytest.fixture
def publisher(signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> Publisher:
    return Publisher((KID, signing_key), (OTHER_KID, other_key))


@pytest.fixture
async def jwks(publisher: Publisher) -> JwksCache:
    cache = JwksCache(publisher)
    await cache.refresh()
    return cache


@pytest.fixture
def revocations(redis: aioredis.Redis, key_prefix: str) -> RevocationChecker:
    return RevocationChecker(redis, key_prefix)


@pytest.fixture
def authenticator(jwks: JwksCache, revocations: RevocationChecker) -> JwtAuthenticator:
    return JwtAuthenticator(AUDIENCE, jwks, revocations, ISSUER, SCOPES)


# --- the attack suite --------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
async def test_the_authenticator_refuses(
    attack: Attack,
    authenticator: JwtAuthenticator,
    signing_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    attacker_key: rsa.RSAPrivateKey,
) -> None:
    token = attack.build(keyring(signing_key, other_key, attacker_key))
    with pytest.raises(Unauthenticated) as refused:
        await authenticator.authenticate(APPEND, bearer(token))
    assert refused.value.message == f"invalid token: {attack.reason}"


async def test_a_valid_token_is_accepted(
    authenticator: JwtAuthenticator, signing_key: rsa.RSAPrivateKey
) -> None:
    """The control for the suite."""
    principal = await authenticator.authenticate(APPEND, bearer(forge(header(), claims(), signing_key)))
    assert principal.tenant_id == "acme"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (call(), "missing bearer token"),
        (call(("x-request-id", "r1")), "missing bearer token"),
        (call(("authorization", "Basic dXNlcjpwdw==")), "the authorization header is not 'Bearer <token>'"),
        (call(("authorization", "Bearer ")), "the authorization header is not 'Bearer <token>'"),
        (
            call(("authorization", "Bearer a"), ("authorization", "Bearer b")),
            "more than one authorization header",
        ),
    ],
)
async def test_a_call_without_exactly_one_bearer_token_is_unauthenticated(
    authenticator: JwtAuthenticator, context: RpcContext, message: str
) -> None:
    with pytest.raises(Unauthenticated, match=message):
        await authenticator.authenticate(APPEND, context)


async def test_the_bearer_scheme_is_case_insensitive(
    authenticator: JwtAuthenticator, signing_key: rsa.RSAPrivateKey
) -> None:
    token = forge(header(), claims(), signing_key)
    await authenticator.authenticate(APPEND, call(("authorization", f"bearer {token}")))


async def test_a_token_without_a_tenant_is_unauthenticated(
    authenticator: JwtAuthenticator, signing_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(Unauthenticated, match="tenant_id"):
        await authenticator.authenticate(APPEND, bearer(forge(header(), claims(tenant_id=None), signing_key)))


# --- revocation --------------------------------------------------------------------------------------


async def test_a_revoked_token_is_unauthenticated(
    authenticator: JwtAuthenticator, signing_key: rsa.RSAPrivateKey, redis: aioredis.Redis, key_prefix: str
) -> None:
    payload = claims()
    await mark_revoked(redis, key_prefix, payload["jti"], payload["exp"])
    with pytest.raises(Unauthenticated) as refused:
        await authenticator.authenticate(APPEND, bearer(forge(header(), payload, signing_key)))
    assert refused.value.message == "invalid token: revoked"


async def test_a_token_in_use_is_refused_within_a_second_of_its_revocation(
    authenticator: JwtAuthenticator, signing_key: rsa.RSAPrivateKey, redis: aioredis.Redis, key_prefix: str
) -> None:
    payload = claims()
    context = bearer(forge(header(), payload, signing_key))
    await authenticator.authenticate(APPEND, context)
    await mark_revoked(redis, key_prefix, payload["jti"], payload["exp"])
    revoked_at = time.monotonic()
    with pytest.raises(Unauthenticated, match="revoked"):  # noqa: PT012 - the loop is the point
        while True:
            await authenticator.authenticate(APPEND, context)
            assert time.monotonic() - revoked_at < 1.05, "still accepted a second after its revocation"
            await redis.ping()


async def test_an_unreachable_revocation_store_fails_closed(
    jwks: JwksCache, key_prefix: str, signing_key: rsa.RSAPrivateKey
) -> None:
    unreachable: aioredis.Redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        authenticator = JwtAuthenticator(
            AUDIENCE, jwks, RevocationChecker(unreachable, key_prefix), ISSUER, {}
        )
        with pytest.raises(Unavailable, match="revocation"):
            await authenticator.authenticate(APPEND, bearer(forge(header(), claims(), signing_key)))
    finally:
        await unreachable.aclose()


# --- scopes ------------------------------------------------------------------------------------------


async def test_a_method_needs_its_scope(
    authenticator: JwtAuthenticator, signing_key: rsa.RSAPrivateKey
) -> None:
    reader = bearer(forge(header(), claims(scope="conversation:read"), signing_key))
    with pytest.raises(PermissionDenied, match="conversation:write"):
        await authenticator.authenticate(APPEND, reader)
    # A method with no rule needs a valid token only.
    await authenticator.authenticate("/macp.conversation.v1.ConversationService/GetAgent", reader)


async def test_a_service_wide_rule_covers_every_method_of_the_service(
    authenticator: JwtAuthenticator, signing_key: rsa.RSAPrivateKey
) -> None:
    without = bearer(forge(header(), claims(), signing_key))
    with_scope = bearer(forge(header(), claims(scope="metering:read"), signing_key))
    with pytest.raises(PermissionDenied, match="metering:read"):
        await authenticator.authenticate("/macp.metering.v1.MeteringService/GetUsage", without)
    await authenticator.authenticate("/macp.metering.v1.MeteringService/GetUsage", with_scope)


async def test_a_scope_is_matched_whole(
    authenticator: JwtAuthenticator, signing_key: rsa.RSAPrivateKey
) -> None:
    almost = bearer(forge(header(), claims(scope="macp:admin:read macp:adm"), signing_key))
    with pytest.raises(PermissionDenied):
        await authenticator.authenticate(ROTATE, almost)


# --- the principal -----------------------------------------------------------------------------------


def test_principal_from_claims(signing_key: rsa.RSAPrivateKey, keys: dict[str, rsa.RSAPublicKey]) -> None:
    payload = claims(
        act={
            "sub": "agent-sub",
            "client_id": "orchestrator",
            "agent_id": "a-1",
            "act": {"sub": "orchestrator", "client_id": "orchestrator"},
        }
    )
    principal = principal_from_claims(
        verify(forge(header(), payload, signing_key), keys=keys, issuer=ISSUER, audience=AUDIENCE)
    )
    assert principal == Principal(
        tenant_id="acme",
        user_id="user-1",
        tier=principal_pb2.TIER_PRO,
        scopes=["conversation:read", "conversation:write"],
        client_id="web-app",
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        actor_chain=[
            principal_pb2.Actor(
                type=principal_pb2.ACTOR_TYPE_AGENT, id="agent-sub", client_id="orchestrator"
            ),
            principal_pb2.Actor(
                type=principal_pb2.ACTOR_TYPE_CLIENT, id="orchestrator", client_id="orchestrator"
            ),
        ],
        token_id=payload["jti"],
        expire_time=Timestamp(seconds=payload["exp"]),
    )


def test_a_client_acting_for_itself_has_no_user(
    signing_key: rsa.RSAPrivateKey, keys: dict[str, rsa.RSAPublicKey]
) -> None:
    payload = claims(sub="orchestrator", client_id="orchestrator", user_id=None, client_class="internal")
    principal = principal_from_claims(
        verify(forge(header(), payload, signing_key), keys=keys, issuer=ISSUER, audience=AUDIENCE)
    )
    assert (principal.user_id, principal.client_id) == ("", "orchestrator")
    assert principal.client_class == principal_pb2.CLIENT_CLASS_INTERNAL


# --- keys --------------------------------------------------------------------------------------------


async def test_a_token_signed_with_a_newly_rotated_key_is_accepted(
    authenticator: JwtAuthenticator,
    publisher: Publisher,
    signing_key: rsa.RSAPrivateKey,
    attacker_key: rsa.RSAPrivateKey,
) -> None:
    # The "attacker" key stands in for a fresh key the token service has just made current.
    publisher.publish(("k3", attacker_key), (KID, signing_key))
    principal = await authenticator.authenticate(APPEND, bearer(forge(header("k3"), claims(), attacker_key)))
    assert principal.tenant_id == "acme"


async def test_a_key_removed_from_the_jwks_stops_verifying_even_tokens_seen_before(
    authenticator: JwtAuthenticator, jwks: JwksCache, publisher: Publisher, other_key: rsa.RSAPrivateKey
) -> None:
    context = bearer(forge(header(OTHER_KID), claims(), other_key))
    await authenticator.authenticate(APPEND, context)  # verified and remembered
    publisher.publish()  # OTHER_KID retired (and KID too)
    await jwks.refresh()
    with pytest.raises(Unauthenticated, match="unknown_kid"):
        await authenticator.authenticate(APPEND, context)


async def test_before_any_keys_are_loaded_the_answer_is_unavailable(
    revocations: RevocationChecker, signing_key: rsa.RSAPrivateKey
) -> None:
    publisher = Publisher((KID, signing_key))
    publisher.failing = True
    authenticator = JwtAuthenticator(AUDIENCE, JwksCache(publisher), revocations, ISSUER, {})
    with pytest.raises(Unavailable, match="signing keys"):
        await authenticator.authenticate(APPEND, bearer(forge(header(), claims(), signing_key)))


async def test_a_remembered_token_still_expires(
    jwks: JwksCache, revocations: RevocationChecker, signing_key: rsa.RSAPrivateKey
) -> None:
    now = [time.time()]
    verifier = TokenVerifier(
        audience=AUDIENCE, issuer=ISSUER, jwks=jwks, revocations=revocations, clock=lambda: now[0]
    )
    payload = claims(now[0])
    token = forge(header(), payload, signing_key)
    await verifier.verify(token)
    now[0] = payload["exp"] + 31
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)


# --- over a real server ------------------------------------------------------------------------------

LIST_PROVIDERS = f"/{PROBE_SERVICE}/ListProviders"


@pytest.fixture
async def probe(
    jwks: JwksCache, revocations: RevocationChecker
) -> AsyncIterator[tuple[grpc.aio.Channel, list[Principal]]]:
    """The probe service behind the JwtAuthenticator; its handler records the principal it runs as."""
    seen: list[Principal] = []

    async def list_providers() -> proxy_pb.ListProvidersResponse:
        seen.append(current_principal())
        return proxy_pb.ListProvidersResponse()

    authenticator = JwtAuthenticator(AUDIENCE, jwks, revocations, ISSUER, {LIST_PROVIDERS: "providers:read"})
    definition = dataclasses.replace(probe_definition(list_providers), authenticator=authenticator)
    async with running(definition, PROBE_ENVIRON) as service, channel(service.port) as opened:
        yield opened, seen


async def test_over_grpc_the_status_codes_and_the_principal_are_the_ones_a_caller_sees(
    probe: tuple[grpc.aio.Channel, list[Principal]], signing_key: rsa.RSAPrivateKey
) -> None:
    opened, seen = probe
    stub = proxy_grpc.AgentProxyServiceStub(opened)
    request = proxy_pb.ListProvidersRequest()

    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await stub.ListProviders(request)
    assert (anonymous.value.code(), anonymous.value.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "missing bearer token",
    )

    expired = forge(header(), claims(time.time() - 700), signing_key)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListProviders(request, metadata=(("authorization", f"Bearer {expired}"),))
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid token: expired",
    )

    unscoped = forge(header(), claims(), signing_key)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.ListProviders(request, metadata=(("authorization", f"Bearer {unscoped}"),))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    scoped = claims(scope="providers:read", tenant_id="globex")
    await stub.ListProviders(
        request, metadata=(("authorization", f"Bearer {forge(header(), scoped, signing_key)}"),)
    )
    assert [(p.tenant_id, p.token_id) for p in seen] == [("globex", scoped["jti"])]

    # Probes carry no token and are still answered.
    assert await health_status(opened) == health_pb2.HealthCheckResponse.SERVING
