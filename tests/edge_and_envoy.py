"""The edge (under uvicorn, in this process, served as the edge process serves it, with its
`/metrics` on `MACP_EDGE_METRICS_PORT`) and Envoy in front of the mesh, for tests that cross the
front listener: one way to start and stop both."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn

from services.edge.app import build_app
from services.edge.server import uvicorn_config
from services.edge.settings import EdgeSettings
from services.runtime.metrics import HttpMetrics, serve_metrics
from services.runtime.settings import Env
from services.stack.config import EnvoyPorts
from services.stack.envoy import Envoy
from services.stack.envoy_config import render_native


@asynccontextmanager
async def edge_and_envoy(env: Env, directory: Path, config: Path | None = None) -> AsyncIterator[Envoy]:
    """The edge on `MACP_EDGE_PORT` and Envoy on the ports `env` names, until the block ends (Envoy
    stops first, then the edge); Envoy's bootstrap is `config` if given, else rendered from `env`."""
    settings = EdgeSettings.from_env(env)
    metrics = HttpMetrics("edge")
    server = uvicorn.Server(uvicorn_config(build_app(settings, metrics), settings, host="127.0.0.1"))
    endpoint = await serve_metrics(metrics.registry, "127.0.0.1", settings.metrics_port)
    edge = asyncio.create_task(server.serve())
    config = config or render_native(directory / "envoy.yaml", env)
    envoy = Envoy(directory, config, EnvoyPorts.from_env(env))
    try:
        await asyncio.to_thread(envoy.start)
        yield envoy
    finally:
        await asyncio.to_thread(envoy.stop)
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await edge
        await endpoint.close()
