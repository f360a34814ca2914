"""RSA signing keys as JSON Web Keys, named by their RFC 7638 thumbprint."""

from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives.asymmetric import rsa
from macp.token.v1 import token_service_pb2 as pb

from services.runtime.auth import jwt

RSA_BITS = 2048
RSA_EXPONENT = 65537


def generate_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=RSA_BITS)


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638: base64url(SHA-256) of the required members in lexicographic order; 43 characters of
    [A-Za-z0-9_-], so it is a valid `kid` and the same key always gets the same one."""
    members = jwt.jwk_from_public_key(public_key, "x")
    canonical = json.dumps({"e": members["e"], "kty": "RSA", "n": members["n"]}, separators=(",", ":"))
    return jwt.b64url_encode(hashlib.sha256(canonical.encode()).digest())


def public_jwk(public_key: rsa.RSAPublicKey) -> pb.Jwk:
    return pb.Jwk(**jwt.jwk_from_public_key(public_key, thumbprint(public_key)))
