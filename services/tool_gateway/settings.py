"""The tool gateway's own settings (`MACP_TOOL_GATEWAY_*`), read once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.runtime.breaker import BreakerPolicy
from services.runtime.kept_secrets import optional_sealing_key
from services.runtime.ratelimit import Limit, parse_limits
from services.runtime.settings import Env
from services.tool_gateway.sessions import SessionLimits
from services.tool_gateway.upstream import UpstreamLimits

UPSTREAM_TIMEOUT = "MACP_TOOL_GATEWAY_UPSTREAM_TIMEOUT_SECONDS"
MAX_RESULT_BYTES = "MACP_TOOL_GATEWAY_MAX_RESULT_BYTES"
CATALOGUE_SECONDS = "MACP_TOOL_GATEWAY_CATALOGUE_SECONDS"
MAX_SERVERS = "MACP_TOOL_GATEWAY_MAX_SERVERS"
SERVER_CONCURRENCY = "MACP_TOOL_GATEWAY_SERVER_CONCURRENCY"
BREAKER_FAILURES = "MACP_TOOL_GATEWAY_BREAKER_FAILURES"
BREAKER_OPEN_SECONDS = "MACP_TOOL_GATEWAY_BREAKER_OPEN_SECONDS"
MAX_SESSIONS = "MACP_TOOL_GATEWAY_MAX_SESSIONS"
SESSION_IDLE_SECONDS = "MACP_TOOL_GATEWAY_SESSION_IDLE_SECONDS"
TOOL_RATE_LIMIT = "MACP_TOOL_GATEWAY_TOOL_RATE_LIMIT"
QUOTA_HOLDS = "MACP_TOOL_GATEWAY_QUOTA_HOLDS"
SEALING_KEY = "MACP_TOOL_GATEWAY_SEALING_KEY"
# Calls per second of one tenant to one tool, with room for a short burst: an agent's turn calls a
# tool a few times at most, so this stops only a loop gone wrong or a flood.
TOOL_RATE_LIMIT_DEFAULT = "10/s burst 20"


@dataclass(frozen=True)
class ToolGatewaySettings:
    """upstream: each upstream operation's deadline and the largest result taken from it.
    catalogue_seconds: how long a server's tool list is reused before it is listed again.
    max_servers: the most servers one tenant's catalogue federates.
    server_concurrency: the most operations in flight on one server (more are refused at once).
    breaker: when a server's breaker opens (consecutive failures) and for how long (guards.py).
    sessions: the most upstream sessions the process keeps open, and how long one may sit idle
        (sessions.py).
    tool_rate: the limits of one tenant's calls of one tool (call_limits.py); empty when `off`.
    quota_holds: whether each call holds quota at metering first (call_metering.py); `off` only
        for a mesh without metering (usage is still published, but no quota is enforced)."""

    upstream: UpstreamLimits
    catalogue_seconds: float
    max_servers: int
    server_concurrency: int
    breaker: BreakerPolicy
    sessions: SessionLimits
    tool_rate: tuple[Limit, ...]
    quota_holds: bool
    # The gateway's own client at the token service (for upstream tokens); registered on first use
    # with the initial access token when none is configured.
    client_id: str | None
    client_secret: str | None
    initial_access_token: str | None
    # Seals upstream credentials' secrets at rest (upstream_secrets.py); required once one is kept.
    sealing_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Env) -> ToolGatewaySettings:
        return cls(
            upstream=UpstreamLimits(
                timeout_seconds=env.number(UPSTREAM_TIMEOUT, 10.0, minimum=0.1),
                max_result_bytes=env.integer(MAX_RESULT_BYTES, 1 << 20, minimum=1024, maximum=64 << 20),
            ),
            catalogue_seconds=env.number(CATALOGUE_SECONDS, 30.0),
            max_servers=env.integer(MAX_SERVERS, 100, minimum=1, maximum=1000),
            server_concurrency=env.integer(SERVER_CONCURRENCY, 32, minimum=1, maximum=10_000),
            breaker=BreakerPolicy(
                failure_threshold=env.integer(BREAKER_FAILURES, 5, minimum=1, maximum=1000),
                open_seconds=env.number(BREAKER_OPEN_SECONDS, 60.0, minimum=0.1),
            ),
            tool_rate=_tool_rate(env),
            quota_holds=env.choice(QUOTA_HOLDS, "on", ("on", "off")) == "on",
            sessions=SessionLimits(
                max_sessions=env.integer(MAX_SESSIONS, 256, minimum=1, maximum=100_000),
                idle_seconds=env.number(SESSION_IDLE_SECONDS, 60.0, minimum=0.1),
            ),
            client_id=env.optional_string("MACP_TOOL_GATEWAY_CLIENT_ID"),
            client_secret=env.optional_string("MACP_TOOL_GATEWAY_CLIENT_SECRET"),
            initial_access_token=env.optional_string("MACP_TOKEN_INITIAL_ACCESS_TOKEN"),
            sealing_key=optional_sealing_key(env, SEALING_KEY),
        )


def _tool_rate(env: Env) -> tuple[Limit, ...]:
    """Written as the edge's limits are (`10/s burst 20`, `600/min`, `5/s + 1000/hour`), or `off`."""
    text = env.raw(TOOL_RATE_LIMIT) or TOOL_RATE_LIMIT_DEFAULT
    if text.strip().lower() == "off":
        return ()
    return parse_limits("tool_calls", text, TOOL_RATE_LIMIT)
