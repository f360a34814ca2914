"""An upstream that keeps a record of every request that reaches it (the JSON-RPC method, the MCP
session it names, its credential), so that tests can count the sessions the gateway opens; and,
when told to, that speaks only the 2025-11-25 protocol (it refuses `server/discover`), so that the
SDK's server underneath keeps a session, named in the `Mcp-Session-Id` header, for each client."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from tests.tool_gateway.misbehaving import replaying

DISCOVER = "server/discover"
INITIALIZE = "initialize"


@dataclass(frozen=True)
class Seen:
    http_method: str
    method: str  # the JSON-RPC method; empty for a GET or DELETE
    session_id: str | None
    authorization: str | None


@dataclass
class Recording:
    app: ASGIApp
    legacy: bool = False
    seen: list[Seen] = field(default_factory=list)

    def methods(self, method: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == method]

    @property
    def handshakes(self) -> int:
        """The sessions opened here: one `initialize` each (2025-11-25), or one `server/discover`."""
        return len(self.methods(INITIALIZE if self.legacy else DISCOVER))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = b""
        if scope["method"] == "POST":
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        method = str(json.loads(body).get("method", "")) if body else ""
        self.seen.append(
            Seen(scope["method"], method, headers.get("mcp-session-id"), headers.get("authorization"))
        )
        if self.legacy and method == DISCOVER:
            # As a server of 2025-11-25 answers a method it does not know.
            request_id = json.loads(body).get("id")
            error = {"code": -32601, "message": f"Method not found: {DISCOVER}"}
            answer = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": answer})
            return
        await self.app(scope, replaying(body, receive) if body else receive, send)
