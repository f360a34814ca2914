"""MACP access tokens, the JWS layer: the compact serialization, its header, the RS256 signature,
base64url and the JWK form of the keys. Both directions live here, `sign` next to
`verified_payload`, so the signer and the verifiers cannot drift apart on the format.

The seam with jwt_claims.py is the signature: everything here runs before it is verified (and so
must hold against an attacker's bytes: a fixed header shape, a size limit, a strict base64url
alphabet), everything there reads a payload that is already known to be signed. Nothing here knows
what the claims mean, which is why the verifier of outside issuers' tokens (external.py), whose
claims differ, shares it. Import the names through `services.runtime.auth.jwt`, the public face.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ALGORITHM: Final = "RS256"
TOKEN_TYPE: Final = "at+jwt"
# RFC 9068 section 4: "at+jwt", and the full media type is equally acceptable.
_ACCEPTED_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})
MAX_TOKEN_LENGTH: Final = 8 * 1024
MIN_RSA_KEY_BITS: Final = 2048

# A kid is looked up, logged and may name a file on the signing side: no dots, slashes or spaces.
KID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Base64url without padding (RFC 7515 section 2); the signature segment may be empty or absent so
# that those cases get their own reason instead of a generic "malformed".
_SHAPE: Final = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_-]*))?")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_MEMBERS: Final = frozenset({"alg", "typ", "kid"})
# Members that would let the token choose its own key or demand extensions we do not implement.
FORBIDDEN_HEADER_MEMBERS: Final = frozenset({"jku", "x5u", "x5c", "jwk", "crit"})

_PADDING: Final = padding.PKCS1v15()
_HASH: Final = hashes.SHA256()


class InvalidToken(Exception):
    """A token that must not be accepted. `reason` is a short machine word (`expired`,
    `bad_signature`, ...), safe to log and to return to the caller; `detail` names the claim or
    header member concerned, if any. Neither ever contains the token. Defined in this, the lower
    layer, because the first refusals are this layer's; the claims raise it too."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class KeyLookup(Protocol):
    """Public keys by kid: a plain dict, or the JWKS cache."""

    def get(self, kid: str, /) -> rsa.RSAPublicKey | None: ...


def verified_payload(token: str, keys: KeyLookup, kid_of: Callable[[str], str]) -> Any:
    """The decoded payload of a JWS whose header `kid_of` accepts (returning its kid) and whose RS256
    signature verifies with that key; else `InvalidToken`. Nothing of the payload is read before the
    signature is checked. Shared with the verifier of external issuers' tokens, whose headers differ."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("oversized")
    shape = _SHAPE.fullmatch(token)
    if shape is None:
        raise InvalidToken("malformed", "not a JWS compact serialization")
    header_segment, payload_segment, signature_segment = shape.groups()
    kid = kid_of(header_segment)
    if not signature_segment:
        raise InvalidToken("missing_signature")
    key = keys.get(kid)
    if key is None:
        raise InvalidToken("unknown_kid", kid)
    signature = _b64decode(signature_segment, "signature")
    signing_input = token[: len(header_segment) + 1 + len(payload_segment)].encode("ascii")
    try:
        key.verify(signature, signing_input, _PADDING, _HASH)
    except InvalidSignature:
        raise InvalidToken("bad_signature") from None
    return _decode_payload(payload_segment)


def unverified_issuer(token: str) -> str | None:
    """The `iss` a token claims, before anything about it is trusted: only to choose which issuer's
    keys and rules verify it (as Envoy's jwt_authn picks its provider). None when there is none."""
    shape = _SHAPE.fullmatch(token) if len(token) <= MAX_TOKEN_LENGTH else None
    if shape is None:
        return None
    try:
        payload = _decode_payload(shape.group(2))
    except InvalidToken:
        return None
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    return issuer if isinstance(issuer, str) else None


def sign(
    claims: Mapping[str, Any], *, private_key: rsa.RSAPrivateKey, kid: str, typ: str = TOKEN_TYPE
) -> str:
    """`claims` as a MACP access token signed by `private_key` under `kid`; the header is fixed but
    for `typ`, which only an OpenID Connect ID token sets otherwise (`JWT`): every verifier here
    requires `at+jwt`, so a token of another type is never taken for an access token."""
    if not KID_PATTERN.fullmatch(kid):
        raise ValueError(f"kid {kid!r} must match {KID_PATTERN.pattern}")
    if private_key.key_size < MIN_RSA_KEY_BITS:
        raise ValueError(f"RSA keys must have at least {MIN_RSA_KEY_BITS} bits")
    header = {"alg": ALGORITHM, "typ": typ, "kid": kid}
    signing_input = f"{_b64json(header)}.{_b64json(claims)}"
    signature = private_key.sign(signing_input.encode("ascii"), _PADDING, _HASH)
    token = f"{signing_input}.{b64url_encode(signature)}"
    # Fail loudly where the token is made rather than have every verifier refuse it.
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"the signed token has {len(token)} characters; the limit is {MAX_TOKEN_LENGTH}")
    return token


def jwk_from_public_key(public_key: rsa.RSAPublicKey, kid: str) -> dict[str, str]:
    """The RFC 7517 JWK of an RS256 verification key, as published in the JWKS."""
    if not KID_PATTERN.fullmatch(kid):
        raise ValueError(f"kid {kid!r} must match {KID_PATTERN.pattern}")
    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": ALGORITHM,
        "n": b64url_encode(_unsigned_bytes(numbers.n)),
        "e": b64url_encode(_unsigned_bytes(numbers.e)),
    }


def public_key_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    """The RSA key of one JWKS entry; ValueError for anything that is not an RS256 signing key."""
    if jwk.get("kty") != "RSA":
        raise ValueError(f"kty {jwk.get('kty')!r} is not RSA")
    if jwk.get("alg", ALGORITHM) != ALGORITHM:
        raise ValueError(f"alg {jwk.get('alg')!r} is not {ALGORITHM}")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"use {jwk.get('use')!r} is not sig")
    n, e = (_jwk_integer(jwk, name) for name in ("n", "e"))
    if n.bit_length() < MIN_RSA_KEY_BITS:
        raise ValueError(f"the modulus has {n.bit_length()} bits; at least {MIN_RSA_KEY_BITS} are required")
    return rsa.RSAPublicNumbers(e, n).public_key()


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64json(value: Mapping[str, Any]) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _unsigned_bytes(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")


def _jwk_integer(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is missing")
    # urlsafe_b64decode would silently drop characters outside the alphabet.
    if not _BASE64URL.fullmatch(value):
        raise ValueError(f"{name} is not base64url")
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not base64url") from None


_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")


def _b64decode(segment: str, part: str) -> bytes:
    # The alphabet was checked by _SHAPE; what is left to fail is a length no encoding produces.
    # binascii directly: base64.urlsafe_b64decode is two more Python frames on every verification.
    try:
        padded = (segment + "=" * (-len(segment) % 4)).encode("ascii")
        return binascii.a2b_base64(padded.translate(_FROM_URLSAFE))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed", f"{part} is not base64url") from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two `alg` members wins; accept neither.
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member")
    return members


# One decoder, built once: json.loads with a hook would build a new one on every call.
_HEADER_JSON: Final = json.JSONDecoder(object_pairs_hook=_unique_members)


def decode_header(segment: str) -> Any:
    try:
        return _HEADER_JSON.decode(_b64decode(segment, "header").decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidToken("malformed", "header is not a JSON object") from None


def _decode_payload(segment: str) -> Any:
    # orjson, not json: this runs on every verification and orjson parses the payload in a third of
    # the time. It also refuses what must not pass: NaN and Infinity (an `exp` of NaN would never
    # compare as expired), invalid UTF-8, and nesting deeper than it allows. No duplicate-member
    # check here: the payload is signed by the time it is parsed (the header has one).
    try:
        return orjson.loads(_b64decode(segment, "payload"))
    except ValueError:  # orjson.JSONDecodeError is one
        raise InvalidToken("malformed", "payload is not a JSON object") from None


# Every token one key signs carries the same header segment, and its verdict depends on nothing
# else, so the kid of an accepted header is kept: most verifications skip the header's base64 and
# JSON. Only accepted headers are kept, and a bounded number, so refused ones cannot grow it.
_HEADER_MEMO_SIZE: Final = 64
_accepted_headers: dict[str, str] = {}


def access_token_kid(header_segment: str) -> str:
    """The kid of a MACP access token's header segment (`verify`'s `kid_of`); else InvalidToken."""
    kid = _accepted_headers.get(header_segment)
    if kid is None:
        kid = _check_header(decode_header(header_segment))
        if len(_accepted_headers) >= _HEADER_MEMO_SIZE:
            _accepted_headers.clear()
        _accepted_headers[header_segment] = kid
    return kid


def _check_header(header: Any) -> str:
    """The kid of a header that is exactly {alg: RS256, typ: at+jwt, kid}; else InvalidToken."""
    return check_header(header, _ACCEPTED_TYPES, typ_required=True)


def check_header(header: Any, accepted_types: frozenset[str], *, typ_required: bool) -> str:
    """The kid of a decoded header {alg: RS256, kid, typ (one of `accepted_types`, lower case)}
    with nothing else in it; else InvalidToken. Outside issuers' tokens may leave `typ` out."""
    if not isinstance(header, dict):
        raise InvalidToken("malformed", "header is not a JSON object")
    forbidden = FORBIDDEN_HEADER_MEMBERS.intersection(header)
    if forbidden:
        raise InvalidToken("forbidden_header", min(forbidden))
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("unsupported_alg")
    typ = header.get("typ")
    if (typ is not None or typ_required) and (not isinstance(typ, str) or typ.lower() not in accepted_types):
        raise InvalidToken("invalid_typ")
    kid = header.get("kid")
    if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
        raise InvalidToken("invalid_kid")
    unexpected = header.keys() - _HEADER_MEMBERS
    if unexpected:
        raise InvalidToken("unexpected_header", min(unexpected))
    return kid
