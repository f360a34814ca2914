"""IssueToken's grants: client credentials (RFC 6749 4.4), password for local users (4.3), the
authorization code of the sign-in page (4.1.3, with PKCE: authorization.py) and refresh tokens (6)
with rotation and reuse detection.

Refresh tokens form families: the password and authorization code grants start one, each refresh
uses up its token and adds the next. Presenting a used token means two parties hold the family (one
of them stole it), so the whole family is revoked, with every access token issued from it (RFC 9700
4.14.2). A code redeemed twice revokes the family its first redemption started (RFC 6749 4.1.2).

OpenID Connect: only the authorization code grant takes `openid`, and a code whose scope had it
gets an ID token too (id_tokens.py). The password and client credentials grants refuse `openid`
(invalid_scope). A refresh keeps `openid` among the family's scopes but returns no new ID token
(Core 12.2 allows either): the client keeps the one its sign-in gave it, and userinfo says who the
user is now.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from services.token import audiences, scopes
from services.token.authorization import REUSED_DESCRIPTION, Authorization, CodeReused
from services.token.claims import Identity
from services.token.clients import AUTHORIZATION_CODE, CLIENT_CREDENTIALS, PASSWORD, REFRESH_TOKEN, Clients
from services.token.families import CODE_REUSE, REFRESH_REUSE, revoke_family
from services.token.hashing import hash_refresh_token, new_refresh_token
from services.token.id_tokens import IdTokens
from services.token.minting import Audit, Minted, Minter
from services.token.oauth import oauth_error
from services.token.revocation_records import RevocationRecords
from services.token.settings import TokenSettings
from services.token.sign_in import SignIn
from services.token.store.codes import AuthorizationCode
from services.token.store.directory import Client, DirectoryStore, User
from services.token.store.tokens import RefreshRecord, TokenStore


@dataclass(frozen=True)
class Granted:
    access: Minted
    refresh_token: str | None
    # An OpenID Connect ID token: only from a code whose scope had `openid` (id_tokens.py).
    id_token: str | None = None


class Grants:
    def __init__(
        self,
        clients: Clients,
        directory: DirectoryStore,
        tokens: TokenStore,
        minter: Minter,
        revocations: RevocationRecords,
        sign_in: SignIn,
        authorization: Authorization,
        id_tokens: IdTokens,
        settings: TokenSettings,
    ) -> None:
        self._sign_in = sign_in
        self._id_tokens = id_tokens
        self._authorization = authorization
        self._clients = clients
        self._directory = directory
        self._tokens = tokens
        self._minter = minter
        self._revocations = revocations
        self._settings = settings
        self._public = settings.public_resources

    async def issue(self, request: pb.IssueTokenRequest) -> Granted:
        requested = scopes.parse(request.scope)
        if request.grant_type == pb.GRANT_TYPE_CLIENT_CREDENTIALS:
            client = await self._clients.authenticate_for(
                request.client_id, request.client_secret, CLIENT_CREDENTIALS
            )
            scopes.refuse_openid(requested, CLIENT_CREDENTIALS)
            targets = audiences.resolve(request.audience, request.resource, public=self._public)
            audiences.check_holder(
                targets, client_class=client.client_class, user_sign_in=False, public=self._public
            )
            return Granted(await self._client_credentials(client, requested, targets), None)
        if request.grant_type == pb.GRANT_TYPE_PASSWORD:
            client = await self._clients.authenticate_for(request.client_id, request.client_secret, PASSWORD)
            scopes.refuse_openid(requested, PASSWORD)
            targets = audiences.resolve(request.audience, request.resource, public=self._public)
            audiences.check_holder(
                targets, client_class=client.client_class, user_sign_in=True, public=self._public
            )
            return await self._password(client, request.username, request.password, requested, targets)
        if request.grant_type == pb.GRANT_TYPE_REFRESH_TOKEN:
            client = await self._clients.authenticate_for(
                request.client_id, request.client_secret, REFRESH_TOKEN
            )
            return await self._refresh(client, request, requested)
        if request.grant_type == pb.GRANT_TYPE_AUTHORIZATION_CODE:
            client = await self._clients.authenticate_for(
                request.client_id, request.client_secret, AUTHORIZATION_CODE
            )
            return await self._authorization_code(client, request, requested)
        raise oauth_error("unsupported_grant_type", f"grant type {request.grant_type} is not supported")

    async def _client_credentials(
        self, client: Client, requested: tuple[str, ...], targets: tuple[str, ...]
    ) -> Minted:
        if client.secret_hash is None:
            raise oauth_error(
                "unauthorized_client", "a public client cannot use the client_credentials grant"
            )
        tenant = await self._clients.tenant(client.tenant_id)
        identity = Identity(
            sub=client.client_id,
            client_id=client.client_id,
            client_class=client.client_class,
            tenant_id=tenant.tenant_id,
            tier=tenant.tier,
        )
        return await self._minter.mint(
            identity,
            audiences=targets,
            scopes=scopes.narrow(requested, scopes.for_class(client.client_class, client.scopes)),
            lifetime_seconds=self._settings.access_token_seconds,
            audit=Audit(audit.TOKEN_ISSUE, {"grant_type": CLIENT_CREDENTIALS}),
        )

    async def _password(
        self,
        client: Client,
        username: str,
        password: str,
        requested: tuple[str, ...],
        targets: tuple[str, ...],
    ) -> Granted:
        user = await self._sign_in.verify(client, username, password)
        granted = scopes.narrow(requested, scopes.for_user(client.scopes, admin=user.admin))
        family_id = uuid.uuid4() if REFRESH_TOKEN in client.grant_types else None
        access = await self._user_token(client, user, granted, targets, family_id, PASSWORD)
        refresh = None
        if family_id is not None:
            refresh = await self._new_refresh(client, user, granted, targets, family_id)
        return Granted(access, refresh)

    async def _refresh(
        self, client: Client, request: pb.IssueTokenRequest, requested: tuple[str, ...]
    ) -> Granted:
        token_hash = hash_refresh_token(request.refresh_token)
        record = await self._tokens.refresh(token_hash)
        if record is None or record.client_id != client.client_id:
            raise oauth_error("invalid_grant", "unknown refresh token")
        if record.use_time is not None or record.revoke_time is not None:
            await self._revoke_family(record, REFRESH_REUSE)
            raise oauth_error("invalid_grant", "refresh token already used; its whole family is now revoked")
        if record.expire_time <= datetime.now(UTC):
            raise oauth_error("invalid_grant", "refresh token expired")
        targets = record.audiences
        if request.audience or request.resource:
            targets = audiences.resolve(request.audience, request.resource, public=self._public)
            if not set(targets) <= set(record.audiences):
                raise oauth_error("invalid_target", "a refresh cannot add audiences to the original grant")
        # A family started before service audiences were kept from sign-ins gets no more of them.
        audiences.check_holder(
            targets, client_class=client.client_class, user_sign_in=True, public=self._public
        )
        if await self._tokens.claim_refresh(token_hash) is None:
            # Another request used it between the read and the claim: the same reuse, seen late.
            await self._revoke_family(record, REFRESH_REUSE)
            raise oauth_error("invalid_grant", "refresh token already used; its whole family is now revoked")
        user = await self._directory.user(record.user_id)
        if user is None:
            raise oauth_error("invalid_grant", "the refresh token's user no longer exists")
        access = await self._user_token(
            client, user, scopes.narrow(requested, record.scopes), targets, record.family_id, REFRESH_TOKEN
        )
        # The new refresh token keeps the original grant's scopes and audiences (RFC 6749 6).
        refresh = await self._new_refresh(client, user, record.scopes, record.audiences, record.family_id)
        return Granted(access, refresh)

    async def _user_token(
        self,
        client: Client,
        user: User,
        granted: tuple[str, ...],
        targets: tuple[str, ...],
        family_id: uuid.UUID | None,
        grant_type: str,
    ) -> Minted:
        # The tier is read at every issue, so a tenant's new plan reaches its users at their next refresh.
        tenant = await self._clients.tenant(user.tenant_id)
        identity = Identity(
            sub=user.user_id,
            client_id=client.client_id,
            client_class=client.client_class,
            tenant_id=tenant.tenant_id,
            tier=tenant.tier,
            user_id=user.user_id,
        )
        return await self._minter.mint(
            identity,
            audiences=targets,
            scopes=granted,
            lifetime_seconds=self._settings.access_token_seconds,
            audit=Audit(audit.TOKEN_ISSUE, {"grant_type": grant_type}),
            family_id=family_id,
        )

    async def _new_refresh(
        self,
        client: Client,
        user: User,
        granted: tuple[str, ...],
        targets: tuple[str, ...],
        family_id: uuid.UUID,
    ) -> str:
        token = new_refresh_token()
        now = datetime.now(UTC)
        await self._tokens.insert_refresh(
            RefreshRecord(
                token_hash=hash_refresh_token(token),
                family_id=family_id,
                client_id=client.client_id,
                user_id=user.user_id,
                scopes=granted,
                audiences=targets,
                issue_time=now,
                expire_time=now + timedelta(seconds=self._settings.refresh_token_seconds),
                use_time=None,
                revoke_time=None,
            )
        )
        return token

    async def _authorization_code(
        self, client: Client, request: pb.IssueTokenRequest, requested: tuple[str, ...]
    ) -> Granted:
        try:
            record = await self._authorization.redeem(client, request)
        except CodeReused as reused:
            await self._revoke_family(reused.record, CODE_REUSE)
            raise oauth_error("invalid_grant", REUSED_DESCRIPTION) from None
        user = await self._directory.user(record.user_id)
        if user is None:
            raise oauth_error("invalid_grant", "the authorization code's user no longer exists")
        granted = scopes.narrow(requested, record.scopes)
        access = await self._user_token(
            client, user, granted, record.audiences, record.family_id, AUTHORIZATION_CODE
        )
        refresh = None
        if REFRESH_TOKEN in client.grant_types:
            refresh = await self._new_refresh(client, user, granted, record.audiences, record.family_id)
        # The authentication request's `openid` decides, whatever this request narrowed the scope to.
        id_token = None
        if scopes.OPENID in record.scopes:
            id_token = await self._id_tokens.issue(client.client_id, user, record, access)
        # Presented again while these were being issued: the reuse revokes them too.
        if await self._authorization.reused(record):
            await self._revoke_family(record, CODE_REUSE)
            raise oauth_error("invalid_grant", REUSED_DESCRIPTION)
        return Granted(access, refresh, id_token)

    async def _revoke_family(self, record: RefreshRecord | AuthorizationCode, reason: str) -> None:
        """Revoke the family a reused refresh token or code belongs to, and every token of it."""
        await revoke_family(
            self._revocations,
            self._directory,
            family_id=record.family_id,
            user_id=record.user_id,
            client_id=record.client_id,
            reason=reason,
        )
