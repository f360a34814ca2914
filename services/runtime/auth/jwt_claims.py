"""MACP access tokens, the claims: what a signed payload must hold to be an access token (RFC 9068,
with RFC 8693 delegation) and `Claims`, the verified result.

The seam with jwt_jws.py is the signature: `claims_of` is only ever given a payload whose signature
has been verified, so it can afford to be a plain reading of the JSON, tuned for the hot path (one
loop over the optional claims, NamedTuples rather than dataclasses) instead of being defensive
about the bytes. Import the names through `services.runtime.auth.jwt`, the public face.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from services.runtime.auth.jwt_jws import InvalidToken

DEFAULT_MAX_DELEGATION_DEPTH: Final = 2
# A jti becomes a Redis key and Principal.token_id (max 128 characters).
MAX_JTI_LENGTH: Final = 128
TIERS: Final = frozenset({"free", "pro", "enterprise"})
CLIENT_CLASSES: Final = frozenset({"internal", "consumer", "partner", "third_party"})


class ActorClaim(NamedTuple):
    """One level of the RFC 8693 `act` claim: `{"sub", "client_id", "agent_id" (agent actors)}`.
    A NamedTuple, like `Claims`, for what it saves on every verification."""

    sub: str
    client_id: str | None = None
    agent_id: str | None = None


class Claims(NamedTuple):
    """The verified claims of an access token; `raw` holds every claim as signed.

    A NamedTuple rather than a frozen dataclass: it is just as immutable, and it is built on every
    verification, where a frozen dataclass's `__init__` (one `object.__setattr__` per field) cost
    about 10 µs of a ~100 µs check."""

    iss: str
    sub: str
    aud: tuple[str, ...]
    exp: float
    iat: float
    nbf: float | None
    jti: str
    client_id: str | None
    scopes: tuple[str, ...]
    tenant_id: str | None
    tier: str | None
    user_id: str | None
    client_class: str | None
    # Most recent actor first: actor_chain[0] is the top-level `act`.
    actor_chain: tuple[ActorClaim, ...]
    agent_id: str | None
    owner_id: str | None
    capabilities: tuple[str, ...]
    raw: Mapping[str, Any]

    def check_lifetime(self, now: float, leeway: float) -> None:
        """Raise unless the token is valid at `now`; re-run on every use of a cached verification."""
        if now >= self.exp + leeway:
            raise InvalidToken("expired")
        if self.nbf is not None and self.nbf > now + leeway:
            raise InvalidToken("not_yet_valid", "nbf")
        if self.iat > now + leeway:
            raise InvalidToken("not_yet_valid", "iat")


def claims_of(payload: Any, issuer: str, audience: str, max_delegation_depth: int) -> Claims:
    """The claims of a verified payload if it is an access token of `issuer` for `audience`; else
    InvalidToken. The lifetime is left to `Claims.check_lifetime`, which cached claims re-run."""
    if not isinstance(payload, dict):
        raise InvalidToken("malformed", "payload is not a JSON object")
    iss = _required_string(payload, "iss")
    if iss != issuer:
        raise InvalidToken("wrong_issuer")
    aud = _audiences(payload)
    if audience not in aud:
        raise InvalidToken("wrong_audience")
    jti = _required_string(payload, "jti")
    if len(jti) > MAX_JTI_LENGTH:
        raise InvalidToken("invalid_claim", "jti")
    sub = _required_string(payload, "sub")
    exp, iat, nbf = (
        _required_time(payload, "exp"),
        _required_time(payload, "iat"),
        _optional_time(payload, "nbf"),
    )
    # One loop, not a call per claim: this runs on every verification, and calls are most of its cost.
    get = payload.get
    for name in _OPTIONAL_STRINGS:
        value = get(name)
        if value is not None and (type(value) is not str or not value):
            raise InvalidToken("invalid_claim", name)
    tier, client_class = get("tier"), get("client_class")
    if tier is not None and tier not in TIERS:
        raise InvalidToken("invalid_claim", "tier")
    if client_class is not None and client_class not in CLIENT_CLASSES:
        raise InvalidToken("invalid_claim", "client_class")
    return Claims(
        iss,
        sub,
        aud,
        exp,
        iat,
        nbf,
        jti,
        get("client_id"),
        _scopes(payload),
        get("tenant_id"),
        tier,
        get("user_id"),
        client_class,
        () if get("act") is None else _actor_chain(payload, max_delegation_depth),
        get("agent_id"),
        get("owner_id"),
        () if get("capabilities") is None else _string_list(payload, "capabilities"),
        MappingProxyType(payload),
    )


# The optional string claims, checked in this order (the first bad one names the refusal).
_OPTIONAL_STRINGS: Final = (
    "client_id",
    "tenant_id",
    "tier",
    "user_id",
    "client_class",
    "agent_id",
    "owner_id",
)


def _required_string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        raise InvalidToken("missing_claim", name)
    if not isinstance(value, str) or not value:
        raise InvalidToken("invalid_claim", name)
    return value


def _optional_string(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidToken("invalid_claim", name)
    return value


def numeric_date(value: Any, name: str) -> float:
    # bool is an int in Python; `"exp": true` is not a date.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken("invalid_claim", name)
    if isinstance(value, float) and not math.isfinite(value):  # 1e400 parses as inf
        raise InvalidToken("invalid_claim", name)
    return value


def _required_time(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if value is None:
        raise InvalidToken("missing_claim", name)
    return numeric_date(value, name)


def _optional_time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    return None if value is None else numeric_date(value, name)


def _audiences(claims: Mapping[str, Any]) -> tuple[str, ...]:
    value = claims.get("aud")
    if value is None:
        raise InvalidToken("missing_claim", "aud")
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise InvalidToken("invalid_claim", "aud")


def _scopes(claims: Mapping[str, Any]) -> tuple[str, ...]:
    value = claims.get("scope")
    if value is None:
        return ()
    if not isinstance(value, str):
        raise InvalidToken("invalid_claim", "scope")
    return tuple(value.split())


def _string_list(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidToken("invalid_claim", name)
    return tuple(value)


def _actor_chain(claims: Mapping[str, Any], max_depth: int) -> tuple[ActorClaim, ...]:
    chain: list[ActorClaim] = []
    act = claims.get("act")
    while act is not None:
        if len(chain) == max_depth:
            raise InvalidToken("delegation_too_deep")
        if not isinstance(act, dict):
            raise InvalidToken("invalid_claim", "act")
        sub = act.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("invalid_claim", "act")
        chain.append(
            ActorClaim(
                sub=sub,
                client_id=_optional_string(act, "client_id"),
                agent_id=_optional_string(act, "agent_id"),
            )
        )
        act = act.get("act")
    return tuple(chain)
