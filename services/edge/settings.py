"""The edge's own settings (`MACP_EDGE_*`), on top of the settings every process reads."""

from __future__ import annotations

from dataclasses import dataclass

from services.edge.rate_limits import RateLimitSettings
from services.runtime.auth.settings import DEFAULT_ISSUER, AuthSettings
from services.runtime.registry import EDGE
from services.runtime.settings import CommonSettings, Env, RedisSettings


@dataclass(frozen=True)
class EdgeSettings:
    common: CommonSettings
    port: int
    metrics_port: int
    max_body_bytes: int
    rpc_timeout_seconds: float
    token_issuer: str
    auth: AuthSettings
    redis: RedisSettings
    client_id: str | None
    client_secret: str | None
    initial_access_token: str | None
    rate_limits: RateLimitSettings

    @classmethod
    def from_env(cls, env: Env) -> EdgeSettings:
        return cls(
            common=CommonSettings.from_env(env),
            port=env.port("MACP_EDGE_PORT", EDGE.port),
            metrics_port=env.port("MACP_EDGE_METRICS_PORT", EDGE.metrics_port),
            max_body_bytes=env.integer("MACP_EDGE_MAX_BODY_BYTES", 1_048_576, minimum=1024, maximum=64 << 20),
            rpc_timeout_seconds=env.number("MACP_EDGE_RPC_TIMEOUT_SECONDS", 30.0, minimum=0.1),
            token_issuer=env.url("MACP_TOKEN_ISSUER", ("http", "https"), "https://macp.example")
            or DEFAULT_ISSUER,
            auth=AuthSettings.from_env(env),
            redis=RedisSettings.from_env(env),
            client_id=env.optional_string("MACP_EDGE_CLIENT_ID") or None,
            client_secret=env.optional_string("MACP_EDGE_CLIENT_SECRET") or None,
            initial_access_token=env.optional_string("MACP_TOKEN_INITIAL_ACCESS_TOKEN") or None,
            rate_limits=RateLimitSettings.from_env(env),
        )
