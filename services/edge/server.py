"""Entry point of the edge process: settings, logs, metrics, then uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from services.edge.app import build_app
from services.edge.settings import EdgeSettings
from services.runtime import tracing
from services.runtime.logs import configure_logging
from services.runtime.metrics import HttpMetrics, serve_metrics
from services.runtime.registry import EDGE
from services.runtime.settings import Env, SettingsError, TracingSettings


def uvicorn_config(app: ASGIApp, settings: EdgeSettings, **overrides: Any) -> uvicorn.Config:
    """How the edge is served, WebSocket settings included (tests and benches serve it the same way)."""
    ws = settings.websocket
    heartbeat = ws.heartbeat_seconds or None  # 0 turns server pings off
    options: dict[str, Any] = {
        "host": settings.common.bind_host,
        "port": settings.port,
        "log_config": None,  # our JSON logging is already configured
        "access_log": False,  # the request-context middleware writes the access log
        "proxy_headers": True,
        "forwarded_allow_ips": "127.0.0.1",
        "timeout_graceful_shutdown": int(settings.common.shutdown_grace_seconds),
        "lifespan": "on",
        "ws": ws.implementation,
        "ws_max_size": ws.max_frame_bytes,
        "ws_ping_interval": heartbeat,
        "ws_ping_timeout": ws.heartbeat_timeout_seconds if heartbeat else None,
        # permessage-deflate keeps a zlib context per connection (tens of KiB each); the frames are
        # small JSON, so compression would cost more memory than it saves bandwidth.
        "ws_per_message_deflate": False,
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
    endpoint = serve_metrics(metrics.registry, settings.common.bind_host, settings.metrics_port)
    config = uvicorn_config(build_app(settings, metrics), settings)
    try:
        uvicorn.Server(config).run()  # handles SIGTERM/SIGINT itself: stops accepting, drains, exits
    finally:
        endpoint.close()
        tracing.shutdown()  # the spans still buffered go out before the process ends
    return 0
