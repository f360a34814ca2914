"""Entry point of the provider server process: settings, logs, then uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn

from services.provider_server.app import build_app
from services.provider_server.protocol import ProviderState
from services.provider_server.settings import ProviderServerSettings
from services.runtime.logs import configure_logging
from services.runtime.registry import PROVIDER_SERVER
from services.runtime.settings import Env, SettingsError


def run_provider_server(environ: Mapping[str, str] | None = None) -> int:
    try:
        settings = ProviderServerSettings.from_env(Env(environ))
    except SettingsError as exc:
        print(f"{PROVIDER_SERVER.name}: {exc}", file=sys.stderr)
        return 2
    configure_logging(PROVIDER_SERVER.name, settings.common.log_level)
    config = uvicorn.Config(
        build_app(),
        host=settings.common.bind_host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.common.shutdown_grace_seconds),
        lifespan="off",
    )
    uvicorn.Server(config).run()
    return 0


@asynccontextmanager
async def serving(
    state: ProviderState | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningProviderServer]:
    """The provider server inside the current event loop until the block ends (tests and benchmarks
    run it beside their clients); port 0 picks a free one."""
    state = state or ProviderState()
    config = uvicorn.Config(build_app(state), host=host, port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise OSError(f"the provider server stopped before serving on {host}:{port}")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningProviderServer(base_url=f"http://{host}:{bound}", state=state)
    finally:
        server.should_exit = True
        await task


@dataclass(frozen=True)
class RunningProviderServer:
    base_url: str
    state: ProviderState
