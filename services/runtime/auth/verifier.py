"""One token check for a whole process: `jwt.verify` against the cached keys, a key refresh when a
token names a new kid, the revocation check, and a memory of tokens already verified.

Shared by the gRPC authenticator and the edge, which reads its token from HTTP instead of metadata.

Why remember verified tokens: the same token arrives again and again (every call of a session,
every hop of a turn), and its RSA verify is most of the cost of a check. A token string verified
once will verify again with the same keys, so only its lifetime and revocation are re-checked on
later calls. The memory holds only tokens that passed (junk cannot fill it), is bounded, and is
dropped whenever the key set changes, so a key removed from the JWKS stops verifying at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis.exceptions import RedisError

from services.runtime.auth.external import ExternalIssuers
from services.runtime.auth.jwks import JwksCache
from services.runtime.auth.jwt import (
    DEFAULT_LEEWAY_SECONDS,
    DEFAULT_MAX_DELEGATION_DEPTH,
    Claims,
    InvalidToken,
    unverified_issuer,
    verify,
)
from services.runtime.auth.revocation import RevocationChecker
from services.runtime.errors import Unavailable

DEFAULT_VERIFIED_CACHE_SIZE = 4096


class TokenVerifier:
    """`await verify(token)`: the claims, `InvalidToken` (the caller's fault, reason included) or
    `Unavailable` (keys or revocations cannot be checked right now; fail closed, retry later)."""

    def __init__(
        self,
        *,
        audience: str,
        issuer: str,
        jwks: JwksCache,
        revocations: RevocationChecker,
        leeway: int = DEFAULT_LEEWAY_SECONDS,
        max_delegation_depth: int = DEFAULT_MAX_DELEGATION_DEPTH,
        verified_cache_size: int = DEFAULT_VERIFIED_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
        external: ExternalIssuers | None = None,
    ) -> None:
        self.audience = audience
        self._external = external
        self._issuer = issuer
        self._jwks = jwks
        self._revocations = revocations
        self._leeway = leeway
        self._max_delegation_depth = max_delegation_depth
        self._cache_size = verified_cache_size
        self._clock = clock
        self._verified: dict[str, Claims] = {}
        self._verified_generation = jwks.generation

    async def verify(self, token: str) -> Claims:
        now = self._clock()
        claims = self._remembered(token)
        if claims is None:
            claims = await self._verify_new(token, now)
        else:
            try:
                claims.check_lifetime(now, self._leeway)
            except InvalidToken:
                del self._verified[token]
                raise
        try:
            revoked = await self._revocations.is_revoked(claims.jti)
        except (RedisError, OSError, TimeoutError):
            raise Unavailable("cannot check token revocation right now; try again") from None
        if revoked:
            raise InvalidToken("revoked")
        return claims

    def _remembered(self, token: str) -> Claims | None:
        if self._jwks.generation != self._verified_generation:
            self._verified.clear()
            self._verified_generation = self._jwks.generation
        return self._verified.get(token)

    def _check(self, token: str, now: float) -> Claims:
        return verify(
            token,
            keys=self._jwks,
            issuer=self._issuer,
            audience=self.audience,
            now=now,
            leeway=self._leeway,
            max_delegation_depth=self._max_delegation_depth,
        )

    async def _verify_new(self, token: str, now: float) -> Claims:
        if self._external:
            # Only where outside issuers are configured (the edge) is the unverified `iss` read, to
            # pick the issuer whose keys and rules apply. Their tokens are not remembered: their
            # keys rotate on the issuer's schedule, not with our JWKS generation.
            issuer = unverified_issuer(token)
            if issuer is not None and issuer != self._issuer and issuer in self._external:
                return await self._external.verify(token, issuer, now=now)
        return await self._verify_signed(token, now)

    async def _verify_signed(self, token: str, now: float) -> Claims:
        try:
            claims = self._check(token, now)
        except InvalidToken as exc:
            if exc.reason != "unknown_kid":
                raise
            if not await self._jwks.refresh_for_unknown_kid(exc.detail):
                if not self._jwks.loaded:
                    raise Unavailable(
                        "the token service's signing keys are not loaded yet; try again"
                    ) from None
                raise
            claims = self._check(token, now)
        # No await since the check: it ran on the keys the memory is now tagged with.
        self._remember(token, claims)
        return claims

    def _remember(self, token: str, claims: Claims) -> None:
        if self._jwks.generation != self._verified_generation:
            self._verified.clear()
            self._verified_generation = self._jwks.generation
        if len(self._verified) >= self._cache_size:
            # Oldest first: dicts keep insertion order.
            del self._verified[next(iter(self._verified))]
        self._verified[token] = claims
