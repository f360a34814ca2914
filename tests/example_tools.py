"""The example MCP servers (services/example_tools), served by uvicorn on loopback ports the OS picks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.example_tools.servers import calculator_server, weather_server
from tests.asgi import serving


@asynccontextmanager
async def serving_examples() -> AsyncIterator[tuple[str, str]]:
    """The weather and calculator servers' MCP endpoints, for as long as the block runs."""
    async with (
        serving(lambda _url: weather_server().streamable_http_app()) as weather,
        serving(lambda _url: calculator_server().streamable_http_app()) as calculator,
    ):
        yield f"{weather}/mcp", f"{calculator}/mcp"
