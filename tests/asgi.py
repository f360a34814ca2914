"""An ASGI app served by uvicorn on a loopback port the OS picks, for as long as a block runs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import ASGIApp


@asynccontextmanager
async def serving(build: Callable[[str], ASGIApp], port: int = 0) -> AsyncIterator[str]:
    """`build(url)` served at `url` (the app may need its own URL, as an issuer does); yields it.
    `port` 0 takes one the OS picks; a given one serves a restarted app where the last one was."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    # A response that streams until its client leaves (an MCP client's `subscriptions/listen`
    # stream: the SDK's server does not end one when uvicorn stops) is cut a second into the stop.
    config = uvicorn.Config(
        build(url), log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if task.done():
                await task  # raises what stopped it
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        await task
        listener.close()
