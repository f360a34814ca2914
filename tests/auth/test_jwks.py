"""The JWKS cache: parsing, refresh on an unknown kid (rate-limited), periodic refresh, removed keys,
and the fetch from a real TokenService.GetJwks over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.auth.jwks import JwksCache, jwks_from_proto, keys_from_jwks, token_service_fetch
from services.runtime.context import RpcContext
from tests.auth.forge import KID, OTHER_KID, rsa_jwk


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Publisher:
    """The token service's side of the fetch: the JWKS it publishes right now, and how often it was asked."""

    def __init__(self, *keys: tuple[str, rsa.RSAPrivateKey]) -> None:
        self.fetches = 0
        self.failing = False
        self._waiters: list[asyncio.Future[None]] = []
        self.publish(*keys)

    def publish(self, *keys: tuple[str, rsa.RSAPrivateKey]) -> None:
        self.jwks = {"keys": [rsa_jwk(key.public_key(), kid) for kid, key in keys]}

    async def __call__(self) -> Mapping[str, Any]:
        self.fetches += 1
        await asyncio.sleep(0)  # a real fetch yields to the loop
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set_result(None)
        if self.failing:
            raise ConnectionError("token service unavailable")
        return self.jwks

    async def next_fetch(self) -> None:
        """Returns once the next fetch has been answered (and the cache has taken the answer)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        async with asyncio.timeout(5):
            await waiter


def test_keys_from_jwks_keeps_rs256_signing_keys_and_skips_the_rest(
    signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    good = rsa_jwk(signing_key.public_key(), KID)
    jwks = {
        "keys": [
            good,
            {**rsa_jwk(other_key.public_key(), KID)},  # a second key under the same kid
            {**rsa_jwk(other_key.public_key(), "enc-key"), "use": "enc"},
            {**rsa_jwk(other_key.public_key(), "hmac"), "alg": "HS256"},
            {**rsa_jwk(other_key.public_key(), "../x")},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            "not an object",
        ]
    }
    keys = keys_from_jwks(jwks)
    assert list(keys) == [KID]
    assert keys[KID].public_numbers() == signing_key.public_key().public_numbers()


@pytest.mark.parametrize("document", [{}, {"keys": "k1"}])
def test_keys_from_jwks_refuses_what_is_not_a_jwks(document: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="keys"):
        keys_from_jwks(document)


def test_jwks_from_proto_drops_the_members_a_key_type_does_not_use(signing_key: rsa.RSAPrivateKey) -> None:
    jwk = rsa_jwk(signing_key.public_key(), KID)
    assert jwks_from_proto(pb.GetJwksResponse(keys=[pb.Jwk(**jwk)])) == {"keys": [jwk]}


async def test_an_unknown_kid_refreshes_once_and_then_verifies(
    signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    publisher = Publisher((KID, signing_key))
    cache = JwksCache(publisher, clock=Clock())
    await cache.refresh()
    assert cache.get(OTHER_KID) is None

    publisher.publish((OTHER_KID, other_key), (KID, signing_key))  # the token service rotated
    assert await cache.refresh_for_unknown_kid(OTHER_KID)
    assert cache.get(OTHER_KID) is not None
    assert publisher.fetches == 2


async def test_unknown_kid_refreshes_are_rate_limited(signing_key: rsa.RSAPrivateKey) -> None:
    publisher = Publisher((KID, signing_key))
    clock = Clock()
    cache = JwksCache(publisher, unknown_kid_refresh_seconds=5.0, clock=clock)
    await cache.refresh()

    # An attacker's random kids: one fetch per interval, however many arrive.
    results = await asyncio.gather(*(cache.refresh_for_unknown_kid(f"random-{n}") for n in range(50)))
    assert not any(results)
    assert publisher.fetches == 2
    clock.now += 4.9
    assert not await cache.refresh_for_unknown_kid("random-again")
    assert publisher.fetches == 2
    clock.now += 0.2
    assert not await cache.refresh_for_unknown_kid("random-later")
    assert publisher.fetches == 3


async def test_before_the_first_fetch_succeeds_unknown_kids_retry_within_a_quarter_second(
    signing_key: rsa.RSAPrivateKey,
) -> None:
    publisher = Publisher((KID, signing_key))
    publisher.failing = True  # the token service is not up yet
    clock = Clock()
    cache = JwksCache(publisher, unknown_kid_refresh_seconds=5.0, clock=clock)
    assert not await cache.refresh_for_unknown_kid(KID)
    clock.now += 0.1
    assert not await cache.refresh_for_unknown_kid(KID)
    assert publisher.fetches == 1, "even with no keys, refreshes stay rate-limited"
    publisher.failing = False
    clock.now += 0.2
    assert await cache.refresh_for_unknown_kid(KID)
    assert publisher.fetches == 2
    # Loaded now: the full interval applies again.
    clock.now += 1.0
    assert not await cache.refresh_for_unknown_kid("random")
    assert publisher.fetches == 2


async def test_concurrent_lookups_of_a_new_kid_share_one_fetch(
    signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    publisher = Publisher((KID, signing_key), (OTHER_KID, other_key))
    cache = JwksCache(publisher, clock=Clock())
    assert all(await asyncio.gather(*(cache.refresh_for_unknown_kid(OTHER_KID) for _ in range(20))))
    assert publisher.fetches == 1


async def test_a_key_removed_from_the_jwks_is_gone_after_the_next_refresh(
    signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    publisher = Publisher((KID, signing_key), (OTHER_KID, other_key))
    cache = JwksCache(publisher, clock=Clock())
    await cache.refresh()
    generation = cache.generation
    publisher.publish((KID, signing_key))
    await cache.refresh()
    assert cache.get(OTHER_KID) is None
    assert cache.kids == {KID}
    assert cache.generation != generation


async def test_the_generation_moves_only_when_the_keys_change(signing_key: rsa.RSAPrivateKey) -> None:
    publisher = Publisher((KID, signing_key))
    cache = JwksCache(publisher, clock=Clock())
    await cache.refresh()
    generation = cache.generation
    await cache.refresh()
    assert cache.generation == generation


async def test_a_failed_refresh_keeps_the_keys_already_held(signing_key: rsa.RSAPrivateKey) -> None:
    publisher = Publisher((KID, signing_key))
    clock = Clock()
    cache = JwksCache(publisher, clock=clock)
    await cache.refresh()
    publisher.failing = True
    with pytest.raises(ConnectionError):
        await cache.refresh()
    clock.now += 60
    assert not await cache.refresh_for_unknown_kid("new")
    assert cache.get(KID) is not None
    assert cache.loaded


async def test_start_survives_an_absent_token_service_and_refreshes_in_the_background(
    signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    publisher = Publisher((KID, signing_key))
    publisher.failing = True
    cache = JwksCache(publisher, refresh_seconds=0.05, unknown_kid_refresh_seconds=0.01)
    await cache.start()
    try:
        assert not cache.loaded
        publisher.failing = False
        await publisher.next_fetch()
        assert cache.loaded
        publisher.publish((OTHER_KID, other_key))
        await publisher.next_fetch()
        assert cache.get(OTHER_KID) is not None
        assert cache.get(KID) is None
    finally:
        await cache.stop()
    fetches = publisher.fetches
    await asyncio.sleep(0.15)
    assert publisher.fetches == fetches, "stop() must end the background refresh"


class JwksServicer(pb_grpc.TokenServiceServicer):
    """GetJwks only; every other RPC stays the generated UNIMPLEMENTED."""

    def __init__(self, response: pb.GetJwksResponse) -> None:
        self.response = response

    async def GetJwks(self, request: pb.GetJwksRequest, context: RpcContext) -> pb.GetJwksResponse:
        return self.response


@pytest.fixture
async def token_service(signing_key: rsa.RSAPrivateKey) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    jwk = pb.Jwk(**rsa_jwk(signing_key.public_key(), KID))
    servicer = JwksServicer(pb.GetJwksResponse(keys=[jwk]))  # type: ignore[abstract]
    pb_grpc.add_TokenServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


async def test_token_service_fetch_reads_get_jwks_over_grpc(
    token_service: grpc.aio.Channel, signing_key: rsa.RSAPrivateKey
) -> None:
    cache = JwksCache(token_service_fetch(token_service))
    await cache.refresh()
    key = cache.get(KID)
    assert key is not None
    assert key.public_numbers() == signing_key.public_key().public_numbers()
