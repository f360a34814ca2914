"""Two token service replicas over one Postgres and Redis: a rotation made at one is seen by every
verifier whichever replica it asks, the other replica signs with the new key once it re-reads which
key is current, and a revocation made at one is refused at the other."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.auth.jwks import JwksCache, jwks_from_proto
from services.token import signing
from services.token.service import DEFINITION
from tests.runtime.serving import channel, running
from tests.token.harness import TokenHarness, unverified, verify_with_jwks
from tests.token.test_introspection_revocation import revoke

pytestmark = pytest.mark.integration

# How often a replica re-reads which key is current; shortened so the test need not wait 30 s.
SIGNER_REFRESH_SECONDS = 0.5


@pytest.fixture
async def two_replicas(
    token_environ: dict[str, str],
    token_db: asyncpg.Pool,
    token_redis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[TokenHarness, TokenHarness]]:
    monkeypatch.setattr(signing, "SIGNER_REFRESH_SECONDS", SIGNER_REFRESH_SECONDS)
    async with (
        running(DEFINITION, token_environ) as first,
        running(DEFINITION, token_environ) as second,
        channel(first.port) as to_first,
        channel(second.port) as to_second,
    ):
        yield (
            TokenHarness(pb_grpc.TokenServiceStub(to_first), token_environ, token_db, token_redis),
            TokenHarness(pb_grpc.TokenServiceStub(to_second), token_environ, token_db, token_redis),
        )


async def test_a_rotation_at_one_replica_is_seen_by_every_verifier(
    two_replicas: tuple[TokenHarness, TokenHarness],
) -> None:
    first, second = two_replicas
    [old] = await first.jwks()
    client = await first.register()
    # A verifier as every service holds one, its keys fetched through Envoy's round robin: here it
    # alternates between the replicas itself.
    replicas = itertools.cycle((first, second))

    async def fetch() -> Mapping[str, Any]:
        return jwks_from_proto(await next(replicas).stub.GetJwks(pb.GetJwksRequest()))

    verifier = JwksCache(fetch, refresh_seconds=3600, unknown_kid_refresh_seconds=0)
    await verifier.refresh()
    assert verifier.get(old.kid) is not None

    rotated = await first.stub.RotateSigningKey(
        pb.RotateSigningKeyRequest(), metadata=await first.admin_metadata()
    )
    signed_by_first = await first.client_token(client)
    assert unverified(signed_by_first.access_token)[0]["kid"] == rotated.kid

    # Both replicas publish both keys at once: the set is read from Postgres, not from memory.
    for replica in (first, second):
        assert [key.kid for key in await replica.jwks()] == [rotated.kid, old.kid]
        verify_with_jwks(signed_by_first.access_token, await replica.jwks())
    # The verifier holds only the old key; the new kid makes it refresh, from whichever replica.
    assert verifier.get(rotated.kid) is None
    # The first fetch went to the first replica; this one goes to the second, which did not rotate.
    assert await verifier.refresh_for_unknown_kid(rotated.kid)
    # Each replica verifies the other's tokens: introspection at the replica that did not rotate.
    assert (await second.introspect(signed_by_first.access_token)).active

    # The replica that did not rotate signs with the old key (still published) until it re-reads
    # which key is current, then with the new one.
    await asyncio.sleep(SIGNER_REFRESH_SECONDS + 0.2)
    signed_by_second = await second.client_token(client)
    assert unverified(signed_by_second.access_token)[0]["kid"] == rotated.kid
    assert (await first.introspect(signed_by_second.access_token)).active


async def test_a_revocation_at_one_replica_is_refused_at_the_other(
    two_replicas: tuple[TokenHarness, TokenHarness],
) -> None:
    first, second = two_replicas
    client = await first.register()
    issued = await second.client_token(client)
    assert (await first.introspect(issued.access_token)).active

    await first.stub.Revoke(revoke(client, token=issued.access_token))
    assert not (await second.introspect(issued.access_token)).active
    assert not (await first.introspect(issued.access_token)).active
