"""Hashes of what callers prove they know: user passwords (scrypt) and client secrets (SHA-256).

Passwords are chosen by people, so they get a slow, salted, memory-hard hash. Client secrets are
256 random bits minted here, beyond any guessing, so a fast hash is enough and keeps the
client_credentials grant cheap.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets

_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
_SALT_BYTES = 16
# Compared against when the user does not exist, so a wrong username costs what a wrong password does.
_DUMMY_HASH = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + base64.urlsafe_b64encode(bytes(32)).rstrip(b"=").decode()
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=64 * 1024 * 1024)


def hash_password_sync(password: str) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(_scrypt(password, salt, _N, _R, _P))}"


def password_matches_sync(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, _unb64(expected))


async def hash_password(password: str) -> str:
    """scrypt is CPU work of tens of milliseconds: it runs off the event loop."""
    return await asyncio.to_thread(hash_password_sync, password)


async def password_matches(password: str, stored: str | None) -> bool:
    matches = await asyncio.to_thread(password_matches_sync, password, stored or _DUMMY_HASH)
    return matches and stored is not None


def new_client_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_client_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def client_secret_matches(secret: str, stored: bytes) -> bool:
    return hmac.compare_digest(hash_client_secret(secret), stored)


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
