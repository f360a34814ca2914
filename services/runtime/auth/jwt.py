"""MACP access tokens: JWS compact, RS256, RFC 9068 claims. The strict verifier, and the signer that
the token service and the tests share so both sides agree on one format.

Written on `cryptography` rather than a general JOSE library on purpose: the contract has exactly
one algorithm and one header shape, so everything else (other algorithms, key URLs, inline keys,
critical extensions) is refused outright instead of being configured away, and the hot path does
nothing it does not need (one RSA verify, two small JSON documents).

Order of the checks: size, shape, header, signature, then claims. The payload is parsed only after
its signature is verified, so an attacker's JSON reaches nothing but the tiny header parser.

Three modules, split where that order splits: jwt_jws.py holds everything up to and including the
signature (the format, its header, base64url, signing and the JWK form of the keys), jwt_claims.py
what a signed payload must hold (`Claims`), and this one `verify`, which runs the two in that
order. Every importer uses this module: it re-exports the other two's public names.
"""

from __future__ import annotations

import time
from typing import Final

from services.runtime.auth.jwt_claims import (
    CLIENT_CLASSES,
    DEFAULT_MAX_DELEGATION_DEPTH,
    MAX_JTI_LENGTH,
    TIERS,
    ActorClaim,
    Claims,
    claims_of,
    numeric_date,
)
from services.runtime.auth.jwt_jws import (
    ALGORITHM,
    FORBIDDEN_HEADER_MEMBERS,
    KID_PATTERN,
    MAX_TOKEN_LENGTH,
    MIN_RSA_KEY_BITS,
    TOKEN_TYPE,
    InvalidToken,
    KeyLookup,
    access_token_kid,
    b64url_encode,
    check_header,
    decode_header,
    jwk_from_public_key,
    public_key_from_jwk,
    sign,
    unverified_issuer,
    verified_payload,
)

__all__ = [
    "ALGORITHM",
    "CLIENT_CLASSES",
    "DEFAULT_LEEWAY_SECONDS",
    "DEFAULT_MAX_DELEGATION_DEPTH",
    "FORBIDDEN_HEADER_MEMBERS",
    "KID_PATTERN",
    "MAX_JTI_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MIN_RSA_KEY_BITS",
    "TIERS",
    "TOKEN_TYPE",
    "ActorClaim",
    "Claims",
    "InvalidToken",
    "KeyLookup",
    "b64url_encode",
    "check_header",
    "decode_header",
    "jwk_from_public_key",
    "numeric_date",
    "public_key_from_jwk",
    "sign",
    "unverified_issuer",
    "verified_payload",
    "verify",
]

DEFAULT_LEEWAY_SECONDS: Final = 30


def verify(
    token: str,
    *,
    keys: KeyLookup,
    issuer: str,
    audience: str,
    now: float | None = None,
    leeway: int = DEFAULT_LEEWAY_SECONDS,
    max_delegation_depth: int = DEFAULT_MAX_DELEGATION_DEPTH,
) -> Claims:
    """The claims of `token` if it is a valid MACP access token for `audience`; else `InvalidToken`."""
    payload = verified_payload(token, keys, access_token_kid)
    claims = claims_of(payload, issuer, audience, max_delegation_depth)
    claims.check_lifetime(time.time() if now is None else now, leeway)
    return claims
