"""PKCE (RFC 7636) with the S256 transform only: OAuth 2.1 (4.1.1) and RFC 9700 (2.1.1) drop
`plain`, which a stolen challenge would turn into the verifier itself."""

from __future__ import annotations

import base64
import hashlib
import hmac

S256 = "S256"


def s256(verifier: str) -> str:
    """BASE64URL-ENCODE(SHA256(ASCII(code_verifier))), unpadded (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Whether `verifier` is the one `challenge` was made from, compared in constant time."""
    try:
        transformed = s256(verifier)
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(transformed.encode(), challenge.encode())
