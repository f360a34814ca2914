"""The token service's public signing keys, cached in each process and refreshed from a fetch function.

Lookups are synchronous dict reads so `jwt.verify` never waits on the network. The set is replaced
whole on every successful refresh: a key the token service stops publishing stops verifying at the
next refresh. A failed refresh keeps the keys already held (a token service restart must not make
every process refuse every token).

Refreshes happen periodically (`refresh_seconds`), and early when a token names a kid we do not
hold (the token service rotated its key), but at most once per `unknown_kid_refresh_seconds`: kids
are chosen by whoever sends the token, so a flood of random kids must not become a flood of
GetJwks calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import rsa
from macp.token.v1 import token_service_pb2, token_service_pb2_grpc

from services.runtime.aio import cancel_and_wait
from services.runtime.auth.jwt import KID_PATTERN, public_key_from_jwk

log = logging.getLogger("macp.auth.jwks")

Fetch = Callable[[], Awaitable[Mapping[str, Any]]]
Clock = Callable[[], float]

DEFAULT_REFRESH_SECONDS = 300.0
DEFAULT_UNKNOWN_KID_REFRESH_SECONDS = 5.0
# Until a first fetch succeeds (the token service, or the mesh in front of it, starts after us) the
# service can verify nothing, so it retries from this interval, doubling up to the unknown-kid one.
STARTUP_RETRY_SECONDS = 0.25


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, rsa.RSAPublicKey]:
    """The usable RS256 keys of a JWKS by kid; entries that are not are skipped with a warning.

    ValueError when the document is not a JWKS at all, so the caller keeps the keys it had.
    """
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no `keys` list")
    keys: dict[str, rsa.RSAPublicKey] = {}
    for entry in entries:
        kid = entry.get("kid") if isinstance(entry, Mapping) else None
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            log.warning("skipping a JWKS entry without a valid kid")
            continue
        if kid in keys:
            # Two keys under one kid would make a signature's validity depend on which we kept.
            log.warning("skipping a second JWKS entry with kid %s", kid)
            continue
        try:
            keys[kid] = public_key_from_jwk(entry)
        except ValueError as exc:
            log.warning("skipping JWKS entry %s: %s", kid, exc)
    return keys


def jwks_from_proto(response: token_service_pb2.GetJwksResponse) -> dict[str, Any]:
    """GetJwksResponse as the RFC 7517 document, leaving out members the key type does not use."""
    keys = []
    for jwk in response.keys:
        members = {f.name: getattr(jwk, f.name) for f in jwk.DESCRIPTOR.fields}
        keys.append({name: value for name, value in members.items() if value})
    return {"keys": keys}


def token_service_fetch(channel: grpc.aio.Channel, *, timeout: float = 5.0) -> Fetch:
    """A fetch function calling TokenService.GetJwks over `channel` (the mesh, or the edge's)."""
    stub = token_service_pb2_grpc.TokenServiceStub(channel)

    async def fetch() -> Mapping[str, Any]:
        # Fail fast while the channel cannot connect (start-up must not wait for the token service:
        # the cache retries in the background), rather than the mesh's default of waiting.
        request = token_service_pb2.GetJwksRequest()
        response = await stub.GetJwks(request, timeout=timeout, wait_for_ready=False)
        return jwks_from_proto(response)

    return fetch


def _fingerprint(keys: Mapping[str, rsa.RSAPublicKey]) -> frozenset[tuple[str, int, int]]:
    return frozenset((kid, key.public_numbers().n, key.public_numbers().e) for kid, key in keys.items())


class JwksCache:
    """Public keys by kid (a `jwt.KeyLookup`), kept fresh from `fetch`."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        unknown_kid_refresh_seconds: float = DEFAULT_UNKNOWN_KID_REFRESH_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._refresh_seconds = refresh_seconds
        self._unknown_kid_refresh_seconds = unknown_kid_refresh_seconds
        self._clock = clock
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._loaded = False
        self._generation = 0
        self._last_unknown_kid_refresh = -math.inf
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def get(self, kid: str, /) -> rsa.RSAPublicKey | None:
        return self._keys.get(kid)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @property
    def loaded(self) -> bool:
        """Whether a fetch has ever succeeded; before that, refusing a token says nothing about it."""
        return self._loaded

    @property
    def generation(self) -> int:
        """Changes whenever the key set does, so caches of verified tokens know to drop them."""
        return self._generation

    async def refresh(self) -> None:
        """Fetch now (after any refresh already in flight); raises what the fetch raised."""
        async with self._lock:
            await self._refresh_locked()

    async def refresh_for_unknown_kid(self, kid: str) -> bool:
        """Whether `kid` is known, after one refresh if the rate limit allows it; never raises."""
        if kid in self._keys:
            return True
        async with self._lock:
            # A refresh that ran while we waited for the lock may have brought it.
            if kid in self._keys:
                return True
            # Only these refreshes count: they are the ones a caller can trigger at will. A periodic
            # refresh just before must not delay picking up a key rotated since.
            now = self._clock()
            interval = self._unknown_kid_refresh_seconds
            if not self._loaded:
                interval = min(interval, STARTUP_RETRY_SECONDS)
            if now - self._last_unknown_kid_refresh < interval:
                return False
            self._last_unknown_kid_refresh = now
            try:
                await self._refresh_locked()
            except Exception as exc:
                log.warning("JWKS refresh for an unknown kid failed: %s", exc)
                return False
        return kid in self._keys

    async def _refresh_locked(self) -> None:
        keys = keys_from_jwks(await self._fetch())
        if _fingerprint(keys) != _fingerprint(self._keys):
            self._generation += 1
            log.info("signing keys changed", extra={"kids": sorted(keys)})
        self._keys = keys
        self._loaded = True

    async def start(self) -> None:
        """First fetch (a failure is logged, and retried soon), then refresh in the background."""
        await self._try_refresh()
        self._task = asyncio.create_task(self._refresh_periodically())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _try_refresh(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("JWKS refresh failed; keeping %d known keys: %s", len(self._keys), exc)

    async def _refresh_periodically(self) -> None:
        retry = STARTUP_RETRY_SECONDS
        while True:
            if self._loaded:
                delay = self._refresh_seconds
            else:  # nothing verifies yet: retry soon, backing off
                delay = min(retry, self._unknown_kid_refresh_seconds)
                retry *= 2
            await asyncio.sleep(delay)
            await self._try_refresh()
