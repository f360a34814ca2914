"""Tokens from external OpenID Connect issuers (Cognito, Keycloak, any issuer with a JWKS URL).

The edge accepts them besides the token service's own, and the token service accepts them as the
subject of a token exchange, so a user signed in elsewhere reaches the mesh with a MACP token. Both
read the same list, `MACP_AUTH_EXTERNAL_ISSUERS`: a JSON array with one object per issuer:

    [{"issuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC",
      "jwks_uri": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC/.well-known/jwks.json",
      "audiences": ["5n3hm1s2example"],
      "tenant_claim": "custom:organizationId", "tier_claim": "custom:tier",
      "default_tier": "free", "scopes": ["conversations:read", "conversations:write"]}]

Only `issuer`, `jwks_uri` and `audiences` are required. The checks are as strict as for our own
tokens where the issuers agree with us (RS256 only; no `jku`, `x5u`, `x5c`, `jwk` or `crit`; a kid
that names a key of that issuer's JWKS; `iss`, `exp`, `nbf`, `iat`) and follow the issuers where
they differ: `typ` may be absent or `JWT`, and the audience is `aud` or, for Cognito access tokens
that carry none, `client_id`. What a token may do is the issuer's `scopes`, set here by the operator,
never the token's own `scope` claim (an outside issuer's scopes mean nothing to MACP). The tenant
comes from `tenant_claim` and is required; the tier from `tier_claim`, else `default_tier`.

Revocation: an external token has no jti of ours, so it is known by a digest of its issuer and jti
(or of the whole token when it has none), which `Revoke` and the Redis check use like any other.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import httpx

from services.runtime.auth.jwks import DEFAULT_UNKNOWN_KID_REFRESH_SECONDS, Fetch, JwksCache
from services.runtime.auth.jwt import (
    CLIENT_CLASSES,
    DEFAULT_LEEWAY_SECONDS,
    TIERS,
    Claims,
    InvalidToken,
    check_header,
    decode_header,
    numeric_date,
    verified_payload,
)
from services.runtime.errors import Unavailable
from services.runtime.settings import Env, SettingsError

VARIABLE: Final = "MACP_AUTH_EXTERNAL_ISSUERS"
# What issuers put in `typ`: nothing (Cognito), "JWT" (Keycloak), or RFC 9068's own.
_ACCEPTED_TYPES: Final = frozenset({"jwt", "at+jwt", "application/at+jwt"})
_FIELDS: Final = frozenset(
    {
        "issuer",
        "jwks_uri",
        "audiences",
        "tenant_claim",
        "tier_claim",
        "default_tier",
        "scopes",
        "client_class",
    }
)
DEFAULT_TENANT_CLAIM: Final = "custom:organizationId"
DEFAULT_TIER_CLAIM: Final = "custom:tier"
JWKS_FETCH_TIMEOUT_SECONDS: Final = 5.0


@dataclass(frozen=True)
class ExternalIssuer:
    """One trusted issuer and how its claims map to a MACP principal."""

    issuer: str
    jwks_uri: str
    audiences: tuple[str, ...]
    tenant_claim: str = DEFAULT_TENANT_CLAIM
    tier_claim: str = DEFAULT_TIER_CLAIM
    default_tier: str | None = None
    scopes: tuple[str, ...] = ()
    client_class: str = "consumer"


def external_issuers_from_env(env: Env) -> tuple[ExternalIssuer, ...]:
    """The configured issuers (none when the variable is unset); SettingsError names the entry."""
    text = env.raw(VARIABLE)
    if text is None:
        return ()
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"{VARIABLE} is not JSON ({exc}); set it to a JSON array of issuers") from None
    if not isinstance(document, list):
        raise SettingsError(f"{VARIABLE} must be a JSON array of issuer objects")
    issuers = tuple(_issuer(entry, f"{VARIABLE}[{index}]") for index, entry in enumerate(document))
    names = [issuer.issuer for issuer in issuers]
    if len(set(names)) != len(names):
        raise SettingsError(f"{VARIABLE} names one issuer twice; give each issuer one entry")
    return issuers


def _issuer(entry: Any, where: str) -> ExternalIssuer:
    if not isinstance(entry, dict):
        raise SettingsError(f"{where} must be an object with issuer, jwks_uri and audiences")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise SettingsError(f"{where}.{min(unknown)} is not a setting; the settings are {sorted(_FIELDS)}")
    issuer = _text(entry, "issuer", where, required=True)
    jwks_uri = _text(entry, "jwks_uri", where, required=True)
    for name, url in (("issuer", issuer), ("jwks_uri", jwks_uri)):
        if not url.startswith(("https://", "http://")):
            raise SettingsError(f"{where}.{name} must be an http(s) URL, not {url!r}")
    audiences = _texts(entry, "audiences", where)
    if not audiences:
        raise SettingsError(f"{where}.audiences must list the audiences (client ids) to accept")
    default_tier = _text(entry, "default_tier", where) or None
    if default_tier is not None and default_tier not in TIERS:
        raise SettingsError(f"{where}.default_tier must be one of {sorted(TIERS)}")
    client_class = _text(entry, "client_class", where) or "consumer"
    if client_class not in CLIENT_CLASSES:
        raise SettingsError(f"{where}.client_class must be one of {sorted(CLIENT_CLASSES)}")
    return ExternalIssuer(
        issuer=issuer,
        jwks_uri=jwks_uri,
        audiences=audiences,
        tenant_claim=_text(entry, "tenant_claim", where) or DEFAULT_TENANT_CLAIM,
        tier_claim=_text(entry, "tier_claim", where) or DEFAULT_TIER_CLAIM,
        default_tier=default_tier,
        scopes=_texts(entry, "scopes", where),
        client_class=client_class,
    )


def _text(entry: Mapping[str, Any], name: str, where: str, *, required: bool = False) -> str:
    value = entry.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"{where}.{name} must be a non-empty string")
    return value.strip()


def _texts(entry: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = entry.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise SettingsError(f"{where}.{name} must be a list of non-empty strings")
    return tuple(value)


def http_jwks_fetch(url: str, *, timeout: float = JWKS_FETCH_TIMEOUT_SECONDS) -> Fetch:
    """A fetch function reading an issuer's JWKS document over HTTP(S)."""

    async def fetch() -> Mapping[str, Any]:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            response = await client.get(url, headers={"accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        if not isinstance(document, dict):
            raise ValueError(f"the JWKS at {url} is not a JSON object")
        return document

    return fetch


def _external_kid(header_segment: str) -> str:
    """The kid of an issuer's header: RS256, a kid, an optional typ of JWT or at+jwt, nothing else."""
    return check_header(decode_header(header_segment), _ACCEPTED_TYPES, typ_required=False)


def verify_external(
    token: str,
    issuer: ExternalIssuer,
    keys: JwksCache,
    *,
    now: float | None = None,
    leeway: int = DEFAULT_LEEWAY_SECONDS,
) -> Claims:
    """The claims of `token` mapped to MACP's, if `issuer` signed it for one of its audiences."""
    payload = verified_payload(token, keys, _external_kid)
    if not isinstance(payload, dict):
        raise InvalidToken("malformed", "payload is not a JSON object")
    if payload.get("iss") != issuer.issuer:
        raise InvalidToken("wrong_issuer")
    audiences = _audiences(payload)
    if not set(audiences) & set(issuer.audiences):
        raise InvalidToken("wrong_audience")
    sub = _required_string(payload, "sub")
    claims = Claims(
        iss=issuer.issuer,
        sub=sub,
        aud=audiences,
        exp=_time(payload, "exp", required=True),
        iat=_time(payload, "iat", required=True),
        nbf=_time(payload, "nbf"),
        jti=_revocation_id(issuer.issuer, _string(payload, "jti") or token),
        client_id=_string(payload, "client_id") or _string(payload, "azp") or audiences[0],
        scopes=issuer.scopes,
        tenant_id=_required_string(payload, issuer.tenant_claim),
        tier=_tier(payload, issuer),
        user_id=sub,
        client_class=issuer.client_class,
        actor_chain=(),
        agent_id=None,
        owner_id=None,
        capabilities=(),
        raw=MappingProxyType(payload),
    )
    claims.check_lifetime(time.time() if now is None else now, leeway)
    return claims


def _revocation_id(issuer: str, jti_or_token: str) -> str:
    digest = hashlib.sha256(f"{issuer}\0{jti_or_token}".encode()).hexdigest()
    return f"ext-{digest[:40]}"


def _audiences(payload: Mapping[str, Any]) -> tuple[str, ...]:
    value = payload.get("aud")
    if value is None:
        # Cognito access tokens name their app client in client_id and carry no aud.
        client_id = _string(payload, "client_id")
        if client_id is None:
            raise InvalidToken("missing_claim", "aud")
        return (client_id,)
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    raise InvalidToken("invalid_claim", "aud")


def _string(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidToken("invalid_claim", name)
    return value


def _required_string(payload: Mapping[str, Any], name: str) -> str:
    value = _string(payload, name)
    if value is None:
        raise InvalidToken("missing_claim", name)
    return value


def _time(payload: Mapping[str, Any], name: str, *, required: bool = False) -> Any:
    value = payload.get(name)
    if value is None:
        if required:
            raise InvalidToken("missing_claim", name)
        return None
    return numeric_date(value, name)


def _tier(payload: Mapping[str, Any], issuer: ExternalIssuer) -> str:
    value = payload.get(issuer.tier_claim)
    if value is None:
        if issuer.default_tier is None:
            raise InvalidToken("missing_claim", issuer.tier_claim)
        return issuer.default_tier
    if not isinstance(value, str) or value.lower() not in TIERS:
        raise InvalidToken("invalid_claim", issuer.tier_claim)
    return value.lower()


class ExternalIssuers:
    """The configured issuers with a JWKS cache each; `verify` picks the issuer the token names."""

    def __init__(
        self,
        issuers: Sequence[ExternalIssuer],
        *,
        refresh_seconds: float,
        unknown_kid_refresh_seconds: float = DEFAULT_UNKNOWN_KID_REFRESH_SECONDS,
    ) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self._keys = {
            issuer.issuer: JwksCache(
                http_jwks_fetch(issuer.jwks_uri),
                refresh_seconds=refresh_seconds,
                unknown_kid_refresh_seconds=unknown_kid_refresh_seconds,
            )
            for issuer in issuers
        }

    def __contains__(self, issuer: object) -> bool:
        return issuer in self._issuers

    def __bool__(self) -> bool:
        return bool(self._issuers)

    async def start(self) -> None:
        for keys in self._keys.values():
            await keys.start()

    async def stop(self) -> None:
        for keys in self._keys.values():
            await keys.stop()

    async def verify(self, token: str, issuer_name: str, *, now: float | None = None) -> Claims:
        """As `verify_external` for the issuer `issuer_name`, refreshing its keys (rate-limited)
        when the token names a kid not held yet."""
        issuer = self._issuers.get(issuer_name)
        if issuer is None:
            raise InvalidToken("wrong_issuer")
        keys = self._keys[issuer_name]
        try:
            return verify_external(token, issuer, keys, now=now)
        except InvalidToken as exc:
            if exc.reason != "unknown_kid" or not await keys.refresh_for_unknown_kid(exc.detail):
                if exc.reason == "unknown_kid" and not keys.loaded:
                    raise Unavailable(f"the keys of {issuer_name} are not loaded yet; try again") from None
                raise
        return verify_external(token, issuer, keys, now=now)
