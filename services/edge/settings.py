"""The edge's own settings (`MACP_EDGE_*`), on top of the settings every process reads."""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.auth.settings import DEFAULT_ISSUER
from services.runtime.registry import EDGE
from services.runtime.settings import CommonSettings, Env


@dataclass(frozen=True)
class EdgeSettings:
    common: CommonSettings
    port: int
    metrics_port: int
    max_body_bytes: int
    rpc_timeout_seconds: float
    token_issuer: str

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
        )
