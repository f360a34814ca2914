"""What reaches the ASGI app at `/v1/ws`, although WebSockets are served by the edge's own
protocol (services/edge/ws/link.py) before the app sees them."""

from __future__ import annotations

from http import HTTPStatus

from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.errors import error_response
from services.edge.ws.handshake import WS_PATH


class WebSocketGateway:
    """Answers what reaches the ASGI app at `/v1/ws` although WebSockets are served by the link
    (services/edge/ws/link.py, uvicorn's `ws` protocol): a plain GET is told to upgrade, and a
    WebSocket scope (only under a server without the link, such as a test client) is refused."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close"})
            return
        if scope["type"] == "http" and scope.get("path") == WS_PATH:
            # A plain GET of the WebSocket URL: say what it is instead of a bare 404.
            response = error_response(
                HTTPStatus.UPGRADE_REQUIRED, "UPGRADE_REQUIRED", f"{WS_PATH} is a WebSocket endpoint"
            )
            response.headers["upgrade"] = "websocket"
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)
