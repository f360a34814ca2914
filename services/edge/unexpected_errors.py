"""An exception no handler expected becomes a JSON 500 for its own request, and goes no further.

Starlette's ServerErrorMiddleware answers such an exception with a 500 and then raises it again,
so that the server logs it; uvicorn, seeing an exception after the response started, closes the
connection. But the connection is Envoy's: its front listener keeps connections to the edge open
and hands them to any caller. Envoy has the whole 500, puts the connection back in its pool and
may send the next request, another tenant's, on it just as the close arrives: that request fails
with `503 upstream connect error ... connection termination`. So one caller's crash became
another's error. Here the exception is logged with its request id and answered as every edge
error is, and the connection stays open for whoever comes next.

A response already started (a stream cut by the exception) cannot turn into a 500: the exception
goes on, and the server closes that connection, the only way to tell its client the response
broke; Envoy never reuses a connection in the middle of a response. After a complete response (a
background task failing) the exception is only logged.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.edge.errors import error_response

log = logging.getLogger("macp.edge.errors")


class UnexpectedErrorMiddleware:
    """Plain ASGI, so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = completed = False

        async def tracked_send(message: Message) -> None:
            nonlocal started, completed
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await self._app(scope, receive, tracked_send)
        except Exception:
            log.exception(
                "unexpected error", extra={"method": scope.get("method"), "path": scope.get("path")}
            )
            if completed:
                return
            if started:
                raise
            response = error_response(
                HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL", "the edge failed to handle this request"
            )
            await response(scope, receive, send)
