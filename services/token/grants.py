"""IssueToken's grants: client credentials (RFC 6749 4.4), password for local users (4.3) and
refresh tokens (6) with rotation and reuse detection.

Refresh tokens form families: the password grant starts one, each refresh uses up its token and
adds the next. Presenting a used token means two parties hold the family (one of them stole it),
so the whole family is revoked, with every access token issued from it (RFC 9700 4.14.2).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.token import audiences, scopes
from services.token.claims import Identity
from services.token.clients import CLIENT_CREDENTIALS, PASSWORD, REFRESH_TOKEN, Clients
from services.token.guessing import Guessing, Kind, Target
from services.token.hashing import hash_refresh_token, new_refresh_token, password_matches
from services.token.minting import Audit, Minted, Minter
from services.token.oauth import oauth_error
from services.token.revocation_records import RevocationRecords
from services.token.settings import TokenSettings
from services.token.store.directory import Client, DirectoryStore, User
from services.token.store.tokens import RefreshRecord, TokenStore


@dataclass(frozen=True)
class Granted:
    access: Minted
    refresh_token: str | None


class Grants:
    def __init__(
        self,
        clients: Clients,
        directory: DirectoryStore,
        tokens: TokenStore,
        minter: Minter,
        revocations: RevocationRecords,
        guessing: Guessing,
        settings: TokenSettings,
    ) -> None:
        self._guessing = guessing
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
            targets = audiences.resolve(request.audience, request.resource, public=self._public)
            audiences.check_holder(
                targets, client_class=client.client_class, user_sign_in=False, public=self._public
            )
            return Granted(await self._client_credentials(client, requested, targets), None)
        if request.grant_type == pb.GRANT_TYPE_PASSWORD:
            client = await self._clients.authenticate_for(request.client_id, request.client_secret, PASSWORD)
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
        user = await self._directory.user_by_name(username)
        target = _account(username, user, client)
        # Counted before the (slow) check, so concurrent guesses cannot outrun the count; an unknown
        # username is counted and locked alike, so lockouts do not tell which usernames exist.
        reservation = await self._guessing.reserve(target)
        # An unknown user costs one scrypt too, so timing does not tell which usernames exist.
        matches = await password_matches(password, None if user is None else user.password_hash)
        if user is None or not matches:
            await self._guessing.failed(reservation)
            raise oauth_error("invalid_grant", "wrong username or password")
        await self._guessing.succeeded(target)
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
            await self._revoke_family(record)
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
            await self._revoke_family(record)
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

    async def _revoke_family(self, record: RefreshRecord) -> None:
        user = await self._directory.user(record.user_id)
        # Nobody asked for this revocation: the token service did it on seeing a reuse, so the
        # client the refresh token belongs to stands as the subject.
        who = Who(
            tenant_id=user.tenant_id if user is not None else "",
            subject=record.client_id,
            client_id=record.client_id,
        )
        reason = "refresh token reuse"
        audited = AuditEvent(
            who, audit.TOKEN_REVOKE, f"token_family/{record.family_id}", detail={"reason": reason}
        )
        await self._revocations.revoke_family(record.family_id, reason, audited)


def _account(username: str, user: User | None, client: Client) -> Target:
    """The account a password grant signs in to, as the guessing limit counts it: by the username
    presented, audited in the user's tenant (the client's, for a username nobody holds)."""
    if user is None:
        who = Who(tenant_id=client.tenant_id, subject=username, client_id=client.client_id)
        return Target(Kind.PASSWORD, username, who, f"user/{username}")
    who = Who(tenant_id=user.tenant_id, subject=user.user_id, client_id=client.client_id)
    return Target(Kind.PASSWORD, username, who, f"user/{user.user_id}")
