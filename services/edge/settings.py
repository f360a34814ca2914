"""The edge's own settings (`MACP_EDGE_*`), on top of the settings every process reads.

The WebSocket settings (`MACP_EDGE_WS_*`, see docs/websocket.md):
- IDLE_TIMEOUT_SECONDS: a connection with no subscription that sends no frame for this long is
  closed (4408), so idle sockets do not pile up;
- HEARTBEAT_SECONDS / HEARTBEAT_TIMEOUT_SECONDS: the server pings every connection this often and
  drops one whose pong is this late (1011; 0 turns heartbeats off);
- SEND_QUEUE: frames waiting for one slow client; one more closes it (1013), so a client that
  cannot keep up never slows the orchestrator's stream or other clients;
- MAX_FRAME_BYTES: the largest client frame (a larger one closes the connection with 1009);
- MAX_SUBSCRIPTIONS: conversations one connection may follow at once (one Converse stream each).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.edge import console
from services.edge.rate_limits import RateLimitSettings
from services.runtime.auth.settings import DEFAULT_ISSUER, AuthSettings
from services.runtime.registry import EDGE
from services.runtime.settings import SERVICE_NAMES, CommonSettings, Env, RedisSettings


@dataclass(frozen=True)
class WebSocketSettings:
    idle_timeout_seconds: float
    heartbeat_seconds: float
    heartbeat_timeout_seconds: float
    send_queue: int
    max_frame_bytes: int
    max_subscriptions: int

    @classmethod
    def from_env(cls, env: Env) -> WebSocketSettings:
        return cls(
            idle_timeout_seconds=env.number("MACP_EDGE_WS_IDLE_TIMEOUT_SECONDS", 300.0, minimum=1.0),
            heartbeat_seconds=env.number("MACP_EDGE_WS_HEARTBEAT_SECONDS", 20.0),
            heartbeat_timeout_seconds=env.number("MACP_EDGE_WS_HEARTBEAT_TIMEOUT_SECONDS", 20.0, minimum=1.0),
            send_queue=env.integer("MACP_EDGE_WS_SEND_QUEUE", 256, minimum=1, maximum=65536),
            max_frame_bytes=env.integer(
                "MACP_EDGE_WS_MAX_FRAME_BYTES", 65536, minimum=1024, maximum=16 << 20
            ),
            max_subscriptions=env.integer("MACP_EDGE_WS_MAX_SUBSCRIPTIONS", 16, minimum=1, maximum=1024),
        )


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
    websocket: WebSocketSettings
    sse_heartbeat_seconds: float
    completion_timeout_seconds: float
    # How long an A2A task's record is kept after it was created (services/edge/a2a/task_records.py).
    a2a_task_ttl_seconds: int = 7 * 24 * 3600
    # The largest audio a transcription takes (services/edge/rest/audio.py): a WAV file of about a
    # minute at 24 kHz, under the 4,000,000 bytes a TranscribeRequest carries.
    max_audio_bytes: int = 3 << 20
    # The services that must answer SERVING through the mesh before the edge is ready
    # (services/edge/readiness.py); `MACP_EDGE_NEEDS`, `none` for a partial mesh without them.
    needs: tuple[str, ...] = EDGE.needs
    # The web console's build (`npm run build:console`) served at /console (services/edge/console.py).
    console_dir: Path = console.DEFAULT_DIR

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
            websocket=WebSocketSettings.from_env(env),
            # A comment line on a quiet SSE stream this often (0: none), so proxies keep it open.
            sse_heartbeat_seconds=env.number("MACP_EDGE_SSE_HEARTBEAT_SECONDS", 15.0),
            # The deadline of one /v1/chat/completions turn: longer than a unary call, as the
            # agent writes its whole answer within it.
            completion_timeout_seconds=env.number("MACP_EDGE_COMPLETION_TIMEOUT_SECONDS", 300.0, minimum=1.0),
            a2a_task_ttl_seconds=env.integer(
                "MACP_EDGE_A2A_TASK_TTL_SECONDS", 7 * 24 * 3600, minimum=60, maximum=366 * 24 * 3600
            ),
            max_audio_bytes=env.integer(
                "MACP_EDGE_MAX_AUDIO_BYTES", 3 << 20, minimum=1024, maximum=4_000_000
            ),
            needs=env.names("MACP_EDGE_NEEDS", EDGE.needs, SERVICE_NAMES),
            console_dir=Path(env.string("MACP_EDGE_CONSOLE_DIR", str(console.DEFAULT_DIR))),
        )
