"""The token service's own settings (`MACP_TOKEN_*`), read once at start-up.

MACP_TOKEN_KEY_ENCRYPTION_KEY is the one secret the service cannot start without: it seals the
signing keys stored in Postgres. It is 32 random bytes in base64url, which is exactly what
`python -c "import secrets; print(secrets.token_urlsafe(32))"` prints (43 characters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.runtime.auth.external import ExternalIssuer, external_issuers_from_env
from services.runtime.auth.settings import DEFAULT_ISSUER, mcp_resource
from services.runtime.sealing import GENERATE_HINT, sealing_key
from services.runtime.settings import Env, SettingsError
from services.token.guessing import GuessingPolicy

KEY_ENCRYPTION_KEY = "MACP_TOKEN_KEY_ENCRYPTION_KEY"
INITIAL_ACCESS_TOKEN = "MACP_TOKEN_INITIAL_ACCESS_TOKEN"
OPEN_REGISTRATION_TENANTS = "MACP_TOKEN_OPEN_REGISTRATION_TENANTS"
# RegisterClientRequest.tenant_id's rule (proto/macp/token/v1/token_service.proto).
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@|+-]{0,127}")

MIN_INITIAL_ACCESS_TOKEN_CHARS = 32
# Agent tokens live at most this long (IssueAgentTokenRequest.ttl); a retired key stays published
# until the longest-lived token it may have signed has expired.
AGENT_TOKEN_MAX_SECONDS = 24 * 3600
AGENT_TOKEN_DEFAULT_SECONDS = 3600
AUTHORIZATION_CODE_DEFAULT_SECONDS = 60


def _initial_access_token(env: Env) -> str | None:
    token = env.raw(INITIAL_ACCESS_TOKEN)
    if token is not None and len(token) < MIN_INITIAL_ACCESS_TOKEN_CHARS:
        raise SettingsError(
            f"{INITIAL_ACCESS_TOKEN} is too short ({len(token)} characters); set it to at least "
            f"{MIN_INITIAL_ACCESS_TOKEN_CHARS} random characters (generate one with {GENERATE_HINT}), "
            "or unset it to close client registration"
        )
    return token


def _open_registration(env: Env) -> tuple[str, ...]:
    """The tenants whose MCP clients may register without an initial access token (registration.py);
    unset, empty or `none`: open registration is off."""
    text = (env.raw(OPEN_REGISTRATION_TENANTS) or "").strip()
    if text.lower() in ("", "none"):
        return ()
    tenants = tuple(dict.fromkeys(item.strip() for item in text.split(",")))
    malformed = [tenant for tenant in tenants if not _TENANT_ID.fullmatch(tenant)]
    if malformed:
        raise SettingsError(
            f"{OPEN_REGISTRATION_TENANTS} names {', '.join(repr(t) for t in malformed)}, not a tenant id; "
            "set it to tenant ids separated by commas, or none to turn open registration off"
        )
    return tenants


def _guessing(env: Env) -> GuessingPolicy:
    default = GuessingPolicy()
    first = env.number("MACP_TOKEN_LOCKOUT_SECONDS", default.lockout_seconds, minimum=0.001)
    return GuessingPolicy(
        free_failures=env.integer("MACP_TOKEN_FREE_FAILURES", default.free_failures, minimum=1, maximum=1000),
        lockout_seconds=first,
        max_lockout_seconds=env.number(
            "MACP_TOKEN_MAX_LOCKOUT_SECONDS", default.max_lockout_seconds, minimum=first
        ),
        window_seconds=env.number("MACP_TOKEN_FAILURE_WINDOW_SECONDS", default.window_seconds, minimum=1.0),
    )


@dataclass(frozen=True)
class TokenSettings:
    """issuer: the `iss` of every token (the public base URL of the front listener).
    key_encryption_key: AES-256-GCM key sealing the private signing keys at rest.
    access_token_seconds / refresh_token_seconds: lifetimes of the two token kinds.
    max_delegation_depth: how many actors a token's `act` chain may hold.
    initial_access_token: what RegisterClient requires (RFC 7591 section 3); None closes registration.
    open_registration: the tenants whose MCP clients may register without it (registration.py);
        empty: none may.
    guessing: how failed passwords and client secrets lock an account or client (guessing.py).
    authorization_code_seconds: how long a code from the sign-in page may be redeemed (RFC 6749
        4.1.2 asks for minutes at most; the client redeems it at once).
    """

    issuer: str
    key_encryption_key: bytes
    access_token_seconds: int
    refresh_token_seconds: int
    max_delegation_depth: int
    initial_access_token: str | None
    # Outside OpenID Connect issuers whose tokens ExchangeToken takes as subject tokens (the same
    # list the edge accepts them from; see services/runtime/auth/external.py).
    external_issuers: tuple[ExternalIssuer, ...] = ()
    guessing: GuessingPolicy = field(default_factory=GuessingPolicy)
    open_registration: tuple[str, ...] = ()
    authorization_code_seconds: int = AUTHORIZATION_CODE_DEFAULT_SECONDS

    @classmethod
    def from_env(cls, env: Env) -> TokenSettings:
        # Used exactly as written: every verifier compares `iss` with the same setting, byte for byte.
        issuer = env.url("MACP_TOKEN_ISSUER", ("http", "https"), DEFAULT_ISSUER) or DEFAULT_ISSUER
        return cls(
            issuer=issuer,
            key_encryption_key=sealing_key(env, KEY_ENCRYPTION_KEY),
            access_token_seconds=env.integer(
                "MACP_TOKEN_ACCESS_TOKEN_SECONDS", 900, minimum=60, maximum=AGENT_TOKEN_MAX_SECONDS
            ),
            refresh_token_seconds=env.integer(
                "MACP_TOKEN_REFRESH_TOKEN_SECONDS", 30 * 86400, minimum=300, maximum=365 * 86400
            ),
            max_delegation_depth=env.integer("MACP_TOKEN_MAX_DELEGATION_DEPTH", 2, minimum=0, maximum=8),
            initial_access_token=_initial_access_token(env),
            external_issuers=external_issuers_from_env(env),
            guessing=_guessing(env),
            open_registration=_open_registration(env),
            authorization_code_seconds=env.integer(
                "MACP_TOKEN_AUTHORIZATION_CODE_SECONDS",
                AUTHORIZATION_CODE_DEFAULT_SECONDS,
                minimum=1,
                maximum=600,
            ),
        )

    @property
    def public_resources(self) -> frozenset[str]:
        """The URLs outside clients get tokens for besides the edge: the MCP endpoint (audiences.py)."""
        return frozenset({mcp_resource(self.issuer)})

    @property
    def max_token_seconds(self) -> int:
        """The longest any signed token lives: how long a rotated key must stay published."""
        return max(self.access_token_seconds, AGENT_TOKEN_MAX_SECONDS)
