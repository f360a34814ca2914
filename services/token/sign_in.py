"""A user's username and password, checked under the per-account guessing limit: what the password
grant and the sign-in page (authorization.py) both do, so both count against the same account.

Counted before the (slow) check, so concurrent guesses cannot outrun the count; an unknown
username is counted and locked alike, and costs one scrypt too, so neither lockouts nor timing
tell which usernames exist. One message for an unknown user and a wrong password.
"""

from __future__ import annotations

from services.runtime.audit import Who
from services.token.guessing import Guessing, Kind, Target
from services.token.hashing import password_matches
from services.token.oauth import oauth_error
from services.token.store.directory import Client, DirectoryStore, User

WRONG_CREDENTIALS = "wrong username or password"


class SignIn:
    def __init__(self, directory: DirectoryStore, guessing: Guessing) -> None:
        self._directory = directory
        self._guessing = guessing

    async def verify(self, client: Client, username: str, password: str) -> User:
        """The user, if the password is theirs; invalid_grant otherwise, RESOURCE_EXHAUSTED (with the
        wait) while the account is locked."""
        user = await self._directory.user_by_name(username)
        target = account(username, user, client)
        reservation = await self._guessing.reserve(target)
        matches = await password_matches(password, None if user is None else user.password_hash)
        if user is None or not matches:
            await self._guessing.failed(reservation)
            raise oauth_error("invalid_grant", WRONG_CREDENTIALS)
        await self._guessing.succeeded(target)
        return user


def account(username: str, user: User | None, client: Client) -> Target:
    """The account a sign-in is for, as the guessing limit counts it: by the username presented,
    audited in the user's tenant (the client's, for a username nobody holds)."""
    if user is None:
        who = Who(tenant_id=client.tenant_id, subject=username, client_id=client.client_id)
        return Target(Kind.PASSWORD, username, who, f"user/{username}")
    who = Who(tenant_id=user.tenant_id, subject=user.user_id, client_id=client.client_id)
    return Target(Kind.PASSWORD, username, who, f"user/{user.user_id}")
