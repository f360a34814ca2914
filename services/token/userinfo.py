"""OpenID Connect UserInfo (Core 5.3): who a user's token is for, read fresh from the directory (the
username and the admin flag are not in access tokens; the tier is the tenant's now, as a refresh
would carry it), so a UI shows the user, their tenant and their plan from one call."""

from __future__ import annotations

from dataclasses import dataclass

from services.token.claims import AccessClaims
from services.token.oauth import oauth_error
from services.token.store.directory import DirectoryStore


@dataclass(frozen=True)
class UserInfo:
    sub: str
    preferred_username: str
    tenant_id: str
    tier: str
    admin: bool


class UserInfoLookup:
    def __init__(self, directory: DirectoryStore) -> None:
        self._directory = directory

    async def of(self, claims: AccessClaims) -> UserInfo:
        user_id = claims.identity.user_id
        user = None if user_id is None else await self._directory.user(user_id)
        if user is None:
            raise oauth_error("invalid_token", "the bearer token is not a user's")
        tenant = await self._directory.tenant(user.tenant_id)
        tier = tenant.tier if tenant is not None else claims.identity.tier
        return UserInfo(user.user_id, user.username, user.tenant_id, tier, user.admin)
