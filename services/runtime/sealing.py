"""Secrets at rest: AES-256-GCM under a key from the settings, for any service that must keep a
credential it will use again (the token service's private signing keys in Postgres, the
orchestrator's queued rounds' bearer tokens in Redis).

A sealed value is `version (1 byte) || nonce (12 bytes) || ciphertext+tag`. The caller's associated
data binds it to its place (a key id, a job's conversation and message), so a sealed value copied
elsewhere does not open. A key is 32 random bytes written as base64url, which is exactly what
`python -c "import secrets; print(secrets.token_urlsafe(32))"` prints (43 characters).
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.runtime.settings import Env, SettingsError

_VERSION = b"\x01"
_NONCE_BYTES = 12
_BASE64 = re.compile(r"[A-Za-z0-9_\-+/]+={0,2}")
GENERATE_HINT = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


class SealError(ValueError):
    """A sealed value does not open with this key (another key, or altered bytes)."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise SealError("not a sealed value of a known version")
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, associated)
        except InvalidTag:
            raise SealError("the sealing key does not open it") from None


def decode_sealing_key(text: str) -> bytes:
    """The 32-byte AES-256 key written as base64url (or standard base64), padded or not."""
    if not _BASE64.fullmatch(text):
        raise ValueError("not base64")
    padded = text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4)
    try:
        key = base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(key) != 32:
        raise ValueError(f"decodes to {len(key)} bytes, not 32")
    return key


def sealing_key(env: Env, name: str) -> bytes:
    """The required sealing key in variable `name`; the error names the variable, never the value."""
    expected = f"32 random bytes in base64url (generate one with {GENERATE_HINT})"
    text = env.raw(name)
    if text is None:
        raise SettingsError(f"{name} is not set; set it to {expected}")
    try:
        return decode_sealing_key(text)
    except ValueError as exc:
        raise SettingsError(f"{name} is malformed ({exc}); set it to {expected}") from None
