"""The authorization code grant's first half (RFC 6749 4.1.1-4.1.2, RFC 7636, RFC 9700 2.1): which
authorization requests may show the sign-in page, the sign-in itself, and the code it issues; and
the second half's checks when the code is redeemed (Grants mints the tokens).

The order of the checks is the contract the edge relies on to never redirect anywhere a client did
not register: first the client and the exact redirect URI (failures are invalid_client or
invalid_request, shown to the user by the edge), and only then, with the redirect URI known to be
the client's, what the client may ask (unauthorized_client, invalid_scope, invalid_target, sent
back to that redirect URI).

A code is 256 random bits, stored as its SHA-256 (a database read gives no usable code), bound to
everything the request named and to the user, redeemable once, for a minute by default.

OpenID Connect: `openid` in the scope makes the request an authentication request (Core 3.1.2.1).
It is granted to any client allowed this grant, kept among the code's scopes with the request's
`nonce` and the time the password was checked (`auth_time`), and its redemption adds an ID token
(id_tokens.py). An empty scope still means every user scope the client may grant, and no ID token.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from macp.token.v1 import token_service_pb2 as pb

from services.token import audiences, scopes
from services.token.clients import AUTHORIZATION_CODE
from services.token.hashing import hash_refresh_token
from services.token.oauth import oauth_error
from services.token.pkce import S256, verifier_matches
from services.token.settings import TokenSettings
from services.token.sign_in import SignIn
from services.token.store.codes import AuthorizationCode, CodeStore
from services.token.store.directory import Client, DirectoryStore


@dataclass(frozen=True)
class Checked:
    """An authorization request found acceptable, before anyone signed in."""

    client: Client
    requested: tuple[str, ...]
    targets: tuple[str, ...]


@dataclass(frozen=True)
class IssuedCode:
    code: str
    expires_in: int


def registered_redirect_uris(client: Client) -> tuple[str, ...]:
    uris = client.metadata.get("redirect_uris") or ()
    return tuple(uri for uri in uris if isinstance(uri, str))


def client_name(client: Client) -> str:
    name = client.metadata.get("client_name")
    return name if isinstance(name, str) and name else client.client_id


class Authorization:
    def __init__(
        self, directory: DirectoryStore, codes: CodeStore, sign_in: SignIn, settings: TokenSettings
    ) -> None:
        self._directory = directory
        self._codes = codes
        self._sign_in = sign_in
        self._settings = settings

    async def check(self, client_id: str, redirect_uri: str, scope: str, resource: list[str]) -> Checked:
        client = await self._directory.client(client_id)
        if client is None:
            raise oauth_error("invalid_client", f"unknown client {client_id}")
        # Exact string comparison (RFC 9700 4.1.3): no normalising, no prefix, no pattern.
        if redirect_uri not in registered_redirect_uris(client):
            raise oauth_error(
                "invalid_request",
                f"redirect_uri is not one client {client_id} registered (compared exactly, character "
                "by character)",
            )
        if AUTHORIZATION_CODE not in client.grant_types:
            raise oauth_error(
                "unauthorized_client", f"client {client_id} may not use the {AUTHORIZATION_CODE} grant"
            )
        requested = scopes.parse(scope)
        # An admin may get the most a user may; whether this user may is known once they sign in.
        # `openid` is this grant's own, whatever the client registered (scopes.OPENID).
        scopes.narrow(scopes.split_openid(requested)[1], scopes.for_user(client.scopes, admin=True))
        public = self._settings.public_resources
        targets = audiences.resolve((), resource, public=public)
        audiences.check_holder(targets, client_class=client.client_class, user_sign_in=True, public=public)
        return Checked(client, requested, targets)

    async def authorize(self, request: pb.AuthorizeRequest) -> IssuedCode:
        if request.code_challenge_method != S256:
            raise oauth_error("invalid_request", "code_challenge_method must be S256")
        checked = await self.check(
            request.client_id, request.redirect_uri, request.scope, list(request.resource)
        )
        client = checked.client
        user = await self._sign_in.verify(client, request.username, request.password)
        openid, requested = scopes.split_openid(checked.requested)
        granted = scopes.narrow(requested, scopes.for_user(client.scopes, admin=user.admin))
        if openid:
            granted = (scopes.OPENID, *granted)
        code = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        lifetime = self._settings.authorization_code_seconds
        await self._codes.insert(
            AuthorizationCode(
                code_hash=hash_refresh_token(code),
                client_id=client.client_id,
                redirect_uri=request.redirect_uri,
                code_challenge=request.code_challenge,
                user_id=user.user_id,
                scopes=granted,
                audiences=checked.targets,
                family_id=uuid.uuid4(),
                auth_time=now,
                expire_time=now + timedelta(seconds=lifetime),
                nonce=request.nonce or None,
            )
        )
        return IssuedCode(code, lifetime)

    async def redeem(self, client: Client, request: pb.IssueTokenRequest) -> AuthorizationCode:
        """The code's record, claimed, if `request` may redeem it (RFC 6749 4.1.3, RFC 7636 4.6);
        invalid_grant otherwise. A code redeemed before is marked reused and CodeReused raised, for
        the caller to revoke what its first redemption issued."""
        code_hash = hash_refresh_token(request.code)
        record = await self._codes.code(code_hash)
        if record is None or record.client_id != client.client_id:
            raise oauth_error("invalid_grant", "unknown authorization code")
        if record.use_time is not None:
            await self._codes.mark_reused(code_hash)
            raise CodeReused(record)
        if record.expire_time <= datetime.now(UTC):
            raise oauth_error("invalid_grant", "the authorization code expired")
        if request.redirect_uri != record.redirect_uri:
            raise oauth_error("invalid_grant", "redirect_uri differs from the authorization request's")
        if not verifier_matches(request.code_verifier, record.code_challenge):
            raise oauth_error("invalid_grant", "code_verifier does not match the code_challenge")
        claimed = await self._codes.claim(code_hash)
        if claimed is None:
            # Redeemed by another request between the read and the claim: the same reuse, seen late.
            await self._codes.mark_reused(code_hash)
            raise CodeReused(record)
        return claimed

    async def reused(self, record: AuthorizationCode) -> bool:
        """Whether the code was presented again since it was claimed."""
        return await self._codes.reused(record.code_hash)


class CodeReused(Exception):
    """An authorization code presented after it was redeemed."""

    def __init__(self, record: AuthorizationCode) -> None:
        super().__init__("authorization code reused")
        self.record = record


REUSED_DESCRIPTION = "authorization code already used; the tokens issued for it are now revoked"
