"""Upstream MCP servers that misbehave on purpose: a real SDK server whose tools named after a fault
are answered by a wrapper instead (hanging, a 500, a cut stream, JSON-RPC that is not), one whose
tool returns 50 MB, and one that lists 10,000 tools. Every request that reaches them is counted."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FAULTS = ("hang", "fail500", "garbage", "cut")
HUGE_BYTES = 50 * 1024 * 1024


@dataclass
class Seen:
    calls: dict[str, int] = field(default_factory=dict)
    counted: asyncio.Event = field(default_factory=asyncio.Event)

    async def reached(self, name: str) -> None:
        """Returns once a call of `name` has reached the server."""
        while not self.calls.get(name):
            self.counted.clear()
            await self.counted.wait()


def faulty_server() -> MCPServer:
    server = MCPServer("faulty", version="1.0.0")
    for fault in FAULTS:
        server.add_tool(lambda: "never answered", name=fault, description=f"answers with: {fault}")

    @server.tool(description="A result of 50 MB.")
    def huge() -> str:
        return "x" * HUGE_BYTES

    @server.tool(description="A tool that answers.")
    def fine() -> str:
        return "fine"

    return server


def crowded_server(count: int = 10_000) -> MCPServer:
    server = MCPServer("crowded", version="1.0.0")
    for index in range(count):
        server.add_tool(lambda: "ok", name=f"tool_{index}", description="one of many")
    return server


class Misbehaving:
    """Answers a `tools/call` of a fault's name with that fault; everything else reaches `app`."""

    def __init__(self, app: ASGIApp, seen: Seen) -> None:
        self._app = app
        self._seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        match = re.search(rb'"method"\s*:\s*"tools/call".*?"name"\s*:\s*"([a-z0-9_]+)"', body, re.S)
        name = match.group(1).decode() if match else ""
        if name:
            self._seen.calls[name] = self._seen.calls.get(name, 0) + 1
            self._seen.counted.set()
        if name == "hang":
            # Nothing is ever answered; the request ends when the gateway gives up and hangs up.
            while (await receive())["type"] != "http.disconnect":
                pass
        elif name == "fail500":
            await _answer(send, 500, "text/plain", b"upstream exploded")
        elif name == "garbage":
            await _answer(send, 200, "application/json", b'{"jsonrpc": "2.0", "id": [nonsense')
        elif name == "cut":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": b'event: message\ndata: {"jsonrpc": "2.0", "id"',
                    "more_body": False,
                }
            )
        else:
            await self._app(scope, replaying(body, receive), send)


async def _answer(send: Send, status: int, content_type: str, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` with the request body, already read, given back first."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
