"""Tokens built by hand from base64url, JSON and `cryptography`, without the code under test, so a
crafted attack is exactly the bytes an attacker would send."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "urn:macp:service:conversation"
KID = "k1"
OTHER_KID = "k2"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    """A JSON value as a base64url segment; a str is taken as an already encoded segment."""
    if isinstance(value, str):
        return value
    return b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def header(kid: str = KID, **members: Any) -> dict[str, Any]:
    """The one header MACP issues, with members replaced (a None value removes the member)."""
    fields: dict[str, Any] = {"alg": "RS256", "typ": "at+jwt", "kid": kid, **members}
    return {name: value for name, value in fields.items() if value is not None}


def claims(now: float | None = None, **members: Any) -> dict[str, Any]:
    """A valid user token's claims for AUDIENCE, with members replaced (None removes one)."""
    issued = int(time.time() if now is None else now)
    fields: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": AUDIENCE,
        "exp": issued + 600,
        "iat": issued,
        "nbf": issued,
        "jti": str(uuid.uuid4()),
        "client_id": "web-app",
        "client_class": "consumer",
        "scope": "conversation:read conversation:write",
        "tenant_id": "acme",
        "tier": "pro",
        "user_id": "user-1",
        **members,
    }
    return {name: value for name, value in fields.items() if value is not None}


def nested_act(depth: int) -> dict[str, Any] | None:
    """An `act` claim `depth` levels deep: an agent acting through services."""
    act: dict[str, Any] | None = None
    for level in range(depth, 0, -1):
        inner: dict[str, Any] = {"sub": f"actor-{level}", "client_id": f"client-{level}"}
        if act is not None:
            inner["act"] = act
        act = inner
    return act


def rs256(key: rsa.RSAPrivateKey, signing_input: str) -> bytes:
    return key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())


def forge(
    head: Mapping[str, Any] | str,
    payload: Mapping[str, Any] | str,
    key: rsa.RSAPrivateKey | None = None,
    *,
    signature: bytes | str | None = None,
) -> str:
    """`header.payload.signature`: RS256 by `key`, or the given signature (bytes, or a raw segment)."""
    signing_input = f"{segment(head)}.{segment(payload)}"
    if key is not None:
        signature = rs256(key, signing_input)
    if isinstance(signature, bytes):
        signature = b64(signature)
    return f"{signing_input}.{signature or ''}"


def hs256(head: Mapping[str, Any], payload: Mapping[str, Any], secret: bytes) -> str:
    signing_input = f"{segment(head)}.{segment(payload)}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def es256(head: Mapping[str, Any], payload: Mapping[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    signing_input = f"{segment(head)}.{segment(payload)}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode('ascii'), ec.ECDSA(hashes.SHA256())))}"


def rsa_jwk(key: rsa.RSAPublicKey, kid: str) -> dict[str, str]:
    numbers = key.public_numbers()

    def uint(value: int) -> str:
        return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": uint(numbers.n),
        "e": uint(numbers.e),
    }
