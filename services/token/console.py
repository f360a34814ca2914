"""The web console's OAuth client (`macp-console`), which the token service keeps registered itself.

The console is the platform's own UI, served by the edge at `/console`: a public client (a browser
keeps no secret) that signs users of every tenant in with the authorization code grant and PKCE,
and keeps them signed in with refresh tokens. Its one redirect URI is `<issuer>/console/callback`,
so it follows MACP_TOKEN_ISSUER: ensured at every start, in one statement (a replica starting
beside others finds it there, or brings it up to date), never duplicated. Like the CLI's client
(services/stack/seed.py) it is INTERNAL and in the system tenant; a token it gets is the user's
own (their tenant and tier), with the user scopes, `audit:read` only for a tenant's admins
(scopes.for_user), and never a service audience (audiences.check_holder: a user's sign-in).
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.auth.settings import USER_SCOPES
from services.token.clients import AUTHORIZATION_CODE, REFRESH_TOKEN
from services.token.store.directory import SYSTEM_TENANT, Client, DirectoryStore

CONSOLE_CLIENT_ID = "macp-console"
CONSOLE_CALLBACK_PATH = "/console/callback"
CONSOLE_GRANTS = (AUTHORIZATION_CODE, REFRESH_TOKEN)


def console_redirect_uri(issuer: str) -> str:
    return issuer.rstrip("/") + CONSOLE_CALLBACK_PATH


def console_client(issuer: str) -> Client:
    redirect_uri = console_redirect_uri(issuer)
    return Client(
        client_id=CONSOLE_CLIENT_ID,
        tenant_id=SYSTEM_TENANT,
        client_class="internal",
        secret_hash=None,
        auth_method="none",
        grant_types=CONSOLE_GRANTS,
        scopes=USER_SCOPES,
        metadata={
            "client_name": "MACP console",
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "none",
            "grant_types": list(CONSOLE_GRANTS),
            "response_types": ["code"],
            "scope": " ".join(USER_SCOPES),
            "client_class": "CLIENT_CLASS_INTERNAL",
            "application_type": "web",
        },
        create_time=datetime.now(UTC),
    )


async def ensure_console_client(directory: DirectoryStore, issuer: str) -> bool:
    """Register the console's client, or bring it up to date; True when this call changed it."""
    client = console_client(issuer)
    audited = AuditEvent(
        Who(tenant_id=SYSTEM_TENANT, subject="token-service"),
        audit.CLIENT_REGISTER,
        f"client/{CONSOLE_CLIENT_ID}",
        detail={
            "client_class": client.client_class,
            "scope": " ".join(client.scopes),
            "grant_types": " ".join(client.grant_types),
        },
    )
    return await directory.ensure_client(client, audited)
