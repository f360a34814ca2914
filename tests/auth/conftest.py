"""Keys for the auth tests (RSA generation is slow, so once per session) and real Redis access."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import rsa

from services.stack.infra import Infrastructure
from tests.auth.forge import KID, OTHER_KID


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def signing_key() -> rsa.RSAPrivateKey:
    """The token service's current key, published as KID."""
    return _new_key()


@pytest.fixture(scope="session")
def other_key() -> rsa.RSAPrivateKey:
    """A second published key (OTHER_KID), e.g. the one being retired."""
    return _new_key()


@pytest.fixture(scope="session")
def attacker_key() -> rsa.RSAPrivateKey:
    """A key nobody published."""
    return _new_key()


@pytest.fixture(scope="session")
def keys(signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> dict[str, rsa.RSAPublicKey]:
    return {KID: signing_key.public_key(), OTHER_KID: other_key.public_key()}


@pytest.fixture
async def redis(infrastructure: Infrastructure) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.from_url(infrastructure.env["MACP_REDIS_URL"])
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"test:{uuid.uuid4().hex[:12]}:"
