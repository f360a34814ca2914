"""Client authentication at the token endpoint (RFC 6749 2.3) and what each client may ask for."""

from __future__ import annotations

from services.runtime.audit import Who
from services.token.guessing import Guessing, Kind, Target
from services.token.hashing import client_secret_matches
from services.token.oauth import oauth_error
from services.token.store.directory import Client, DirectoryStore, Tenant

CLIENT_CREDENTIALS = "client_credentials"
PASSWORD = "password"
REFRESH_TOKEN = "refresh_token"
AUTHORIZATION_CODE = "authorization_code"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def secret_target(client: Client) -> Target:
    """A confidential client, as the guessing limit counts its failed secrets."""
    who = Who(tenant_id=client.tenant_id, subject=client.client_id, client_id=client.client_id)
    return Target(Kind.CLIENT_SECRET, client.client_id, who, f"client/{client.client_id}")


class Clients:
    def __init__(self, directory: DirectoryStore, guessing: Guessing) -> None:
        self._directory = directory
        self._guessing = guessing

    async def authenticate(self, client_id: str, client_secret: str) -> Client:
        """The client, if its secret matches (public clients send none); invalid_client otherwise,
        with one message for an unknown client and a wrong secret alike. A client locked by failed
        secrets (guessing.py) is refused, right secret or not, until its lockout ends."""
        # An id from a Basic header never passed the contract's rules: a NUL, which Postgres
        # cannot even compare, names no client (protovalidate refuses it in request fields).
        client = None if "\x00" in client_id else await self._directory.client(client_id)
        if client is None:
            raise oauth_error("invalid_client", "unknown client or wrong client secret")
        if client.secret_hash is None:
            if client_secret:
                raise oauth_error("invalid_client", "a public client sends no client secret")
            return client
        target = secret_target(client)
        failures = await self._guessing.check(target)
        if not client_secret_matches(client_secret, client.secret_hash):
            await self._guessing.count_failure(target)
            raise oauth_error("invalid_client", "unknown client or wrong client secret")
        if failures:
            await self._guessing.succeeded(target)
        return client

    async def authenticate_for(self, client_id: str, client_secret: str, grant_type: str) -> Client:
        """`authenticate`, then unauthorized_client unless the client registered `grant_type`."""
        client = await self.authenticate(client_id, client_secret)
        if grant_type not in client.grant_types:
            raise oauth_error("unauthorized_client", f"client {client_id} may not use the {grant_type} grant")
        return client

    async def tenant(self, tenant_id: str) -> Tenant:
        tenant = await self._directory.tenant(tenant_id)
        if tenant is None:
            raise oauth_error("invalid_request", f"tenant {tenant_id} does not exist")
        return tenant
