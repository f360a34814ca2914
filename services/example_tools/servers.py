"""Two example MCP servers with deterministic tools: `weather` (a forecast for a city) and
`calculator` (arithmetic). Deterministic so that tests and benchmarks know every answer."""

from __future__ import annotations

import hashlib

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

CONDITIONS = ("sunny", "cloudy", "rain", "snow", "windy")


def forecast_for(city: str) -> str:
    """The same forecast for the same city, every time."""
    digest = hashlib.sha256(city.strip().lower().encode()).digest()
    return f"{city}: {CONDITIONS[digest[0] % len(CONDITIONS)]}, {digest[1] % 35 - 5} °C"


def weather_server() -> MCPServer:
    server = MCPServer("weather", version="1.0.0", instructions="Forecasts for cities.")

    @server.tool(description="Tomorrow's forecast for a city.")
    def forecast(city: str) -> str:
        return forecast_for(city)

    return server


def calculator_server() -> MCPServer:
    server = MCPServer("calculator", version="1.0.0", instructions="Exact integer arithmetic.")

    @server.tool(description="The sum of two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="The product of two integers.")
    def multiply(a: int, b: int) -> int:
        return a * b

    @server.tool(description="The quotient of two integers; dividing by zero is the tool's own error.")
    def divide(a: int, b: int) -> float:
        if b == 0:
            raise ToolError("division by zero")
        return a / b

    return server


SERVERS = {"weather": weather_server, "calculator": calculator_server}
