"""The signing keys: one current key signs; rotated keys stay published until their tokens expire.

Keys live in Postgres with the private half sealed (services/runtime/sealing.py), so every replica
signs with the same key. A replica re-reads which key is current every `SIGNER_REFRESH_SECONDS`,
which is why a rotated key is published that much longer than the longest token lifetime.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import json_format
from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.auth import jwt
from services.runtime.sealing import Sealer, SealError
from services.runtime.settings import SettingsError
from services.token import jwk
from services.token.settings import KEY_ENCRYPTION_KEY
from services.token.store.keys import KeyStore, NewKey, StoredKey

SIGNER_REFRESH_SECONDS = 30
# The `typ` of an ID token: RFC 7519's JWT, as OpenID Connect's own examples have it; not at+jwt.
ID_TOKEN_TYPE = "JWT"


@dataclass(frozen=True)
class Signer:
    kid: str
    private_key: rsa.RSAPrivateKey

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.sign(claims, private_key=self.private_key, kid=self.kid)

    def sign_id_token(self, claims: dict[str, Any]) -> str:
        """`claims` as an OpenID Connect ID token: the same key, kid and RS256 as `sign`, typed `JWT`,
        which no MACP verifier takes for an access token (they require `at+jwt`)."""
        return jwt.sign(claims, private_key=self.private_key, kid=self.kid, typ=ID_TOKEN_TYPE)


@dataclass(frozen=True)
class Rotation:
    current: pb.Jwk
    previous_kid: str | None
    previous_retire_time: datetime | None


@dataclass(frozen=True)
class _PublicKey:
    key: rsa.RSAPublicKey
    retire_time: datetime | None
    loaded_at: float

    def stale(self) -> bool:
        # A rotated key's retire time never changes; the current key's is learnt by re-reading it.
        return self.retire_time is None and time.monotonic() - self.loaded_at > SIGNER_REFRESH_SECONDS


def _jwk_message(stored: StoredKey) -> pb.Jwk:
    return json_format.ParseDict(stored.public_jwk, pb.Jwk())


def _public_key(stored: StoredKey) -> rsa.RSAPublicKey:
    return jwt.public_key_from_jwk(stored.public_jwk)


class SigningKeys:
    def __init__(self, store: KeyStore, sealer: Sealer, *, retire_after_seconds: int) -> None:
        self._store = store
        self._sealer = sealer
        self._retire_after_seconds = retire_after_seconds + SIGNER_REFRESH_SECONDS
        self._signer: Signer | None = None
        self._signer_loaded_at = 0.0
        self._public: dict[str, _PublicKey] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Create the first key if there is none, and check the settings' key opens the current one."""
        if await self._store.current() is None:
            await self._store.create_first(await asyncio.to_thread(self._new_key))
        await self.signer()

    async def signer(self) -> Signer:
        async with self._lock:
            if self._signer is None or time.monotonic() - self._signer_loaded_at > SIGNER_REFRESH_SECONDS:
                current = await self._store.current()
                if current is None:
                    raise RuntimeError("no current signing key in token_signing_keys")
                if self._signer is None or self._signer.kid != current.kid:
                    self._signer = Signer(current.kid, self._open(current))
                self._signer_loaded_at = time.monotonic()
            return self._signer

    async def public_key(self, kid: str) -> rsa.RSAPublicKey | None:
        """The key that verifies tokens of `kid`, while it is published; None otherwise."""
        cached = self._public.get(kid)
        if cached is None or cached.stale():
            stored = await self._store.get(kid)
            if stored is None:
                return None
            cached = _PublicKey(_public_key(stored), stored.retire_time, time.monotonic())
            self._public[kid] = cached
        if cached.retire_time is not None and cached.retire_time.timestamp() <= time.time():
            return None
        return cached.key

    async def jwks(self) -> list[pb.Jwk]:
        return [_jwk_message(stored) for stored in await self._store.published()]

    async def rotate(self, by: Who) -> Rotation:
        """A new current key; audited as done by `by`, in its tenant (the system tenant's admins)."""
        new_key = await asyncio.to_thread(self._new_key)
        audited = AuditEvent(by, audit.KEY_ROTATE, f"key/{new_key.kid}")
        current, previous = await self._store.rotate(new_key, self._retire_after_seconds, audited)
        async with self._lock:
            self._signer = Signer(current.kid, self._open(current))
            self._signer_loaded_at = time.monotonic()
        return Rotation(
            current=_jwk_message(current),
            previous_kid=None if previous is None else previous.kid,
            previous_retire_time=None if previous is None else previous.retire_time,
        )

    def _new_key(self) -> NewKey:
        private_key = jwk.generate_private_key()
        public = jwk.public_jwk(private_key.public_key())
        der = private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return NewKey(
            kid=public.kid,
            alg=public.alg,
            public_jwk=json_format.MessageToDict(public, preserving_proto_field_name=True),
            sealed_private_key=self._sealer.seal(der, public.kid.encode()),
        )

    def _open(self, stored: StoredKey) -> rsa.RSAPrivateKey:
        try:
            der = self._sealer.open(stored.sealed_private_key, stored.kid.encode())
        except SealError:
            raise SettingsError(
                f"{KEY_ENCRYPTION_KEY} does not open signing key {stored.kid} stored in Postgres; "
                "set it back to the key the signing keys were sealed with"
            ) from None
        private_key = serialization.load_der_private_key(der, password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise RuntimeError(f"signing key {stored.kid} is not an RSA key")
        return private_key
