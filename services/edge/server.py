"""Entry point of the edge process: settings, logs, metrics, then uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette

from services.edge.app import build_app
from services.edge.settings import EdgeSettings
from services.edge.ws.handshake import WS_PATH, EdgeHandshake
from services.edge.ws.link import WebSocketLink
from services.runtime import tracing
from services.runtime.logs import configure_logging
from services.runtime.metrics import HttpMetrics, serve_metrics
from services.runtime.registry import EDGE
from services.runtime.settings import Env, SettingsError, TracingSettings

# How long an idle client connection stays open (uvicorn's default is 5 s): longer than Envoy keeps an
# idle connection to the edge in its pool (services/stack/envoy_config.py: EDGE_IDLE_TIMEOUT), so that
# Envoy, not the edge, closes it, and no request is sent on a connection as the edge closes it.
KEEP_ALIVE_SECONDS = 75


def uvicorn_config(app: Starlette, settings: EdgeSettings, **overrides: Any) -> uvicorn.Config:
    """How the edge is served, WebSocket settings included (tests and benches serve it the same way).

    uvicorn serves HTTP and hands each WebSocket upgrade to the edge's own protocol
    (services/edge/ws/link.py), which reaches the edge's state through the app once it started."""
    ws = settings.websocket
    link = WebSocketLink.factory(
        EdgeHandshake(lambda: app.state.edge),
        path=WS_PATH,
        max_frame_bytes=ws.max_frame_bytes,
        max_waiting=ws.send_queue,
        heartbeat_seconds=ws.heartbeat_seconds,  # 0 turns server pings off
        heartbeat_timeout_seconds=ws.heartbeat_timeout_seconds,
    )
    options: dict[str, Any] = {
        "host": settings.common.bind_host,
        "port": settings.port,
        "log_config": None,  # our JSON logging is already configured
        "access_log": False,  # the request-context middleware writes the access log
        "proxy_headers": True,
        "forwarded_allow_ips": "127.0.0.1",
        "timeout_graceful_shutdown": int(settings.common.shutdown_grace_seconds),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "lifespan": "on",
        # No permessage-deflate (the link offers no extension): a zlib context per connection
        # costs tens of KiB, and the frames are small JSON.
        "ws": link,
        **overrides,
    }
    return uvicorn.Config(app, **options)


def run_edge(environ: Mapping[str, str] | None = None) -> int:
    try:
        settings = EdgeSettings.from_env(Env(environ))
        tracing_settings = TracingSettings.from_env(Env(environ))
    except SettingsError as exc:
        print(f"{EDGE.name}: {exc}", file=sys.stderr)
        return 2
    configure_logging(EDGE.name, settings.common.log_level)
    tracing.configure(EDGE.name, tracing_settings)
    metrics = HttpMetrics(EDGE.name)
    config = uvicorn_config(build_app(settings, metrics), settings)
    server = uvicorn.Server(config)

    async def serve() -> None:
        endpoint = await serve_metrics(metrics.registry, settings.common.bind_host, settings.metrics_port)
        try:
            await server.serve()  # handles SIGTERM/SIGINT itself: stops accepting, drains, returns
        finally:
            await endpoint.close()

    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(serve())
    finally:
        tracing.shutdown()  # the spans still buffered go out before the process ends
    return 0
