"""The handshake of `/v1/ws` (docs/websocket.md, "Connecting"): who may connect, decided before a
`Connection` exists.

The token comes at connect (`Authorization: Bearer` or `?access_token=`, for browsers, which cannot
set headers on a WebSocket) and is verified like an HTTP request's; a bad one is accepted only to
be closed with 4401, since a refused handshake tells a browser nothing. The connect counts against
the source address's limits before the token is looked at, and against the caller's after.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from urllib.parse import parse_qsl

from opentelemetry.trace import SpanContext
from wsproto.events import Request

from services.edge.context import EdgeContext
from services.edge.rate_limits import refusal
from services.edge.readiness import not_ready_message
from services.edge.source_limits import source_of
from services.edge.ws.close import CloseCode, close_reason
from services.edge.ws.connection import Connection
from services.edge.ws.link import WebSocketLink
from services.runtime import tracing
from services.runtime.auth.authenticator import principal_from_claims
from services.runtime.auth.jwt import InvalidToken
from services.runtime.context import new_request_id, request_id_var
from services.runtime.errors import Unavailable
from services.runtime.principal import Caller

log = logging.getLogger("macp.edge.websocket")

WS_PATH = "/v1/ws"


def connect_token(headers: list[tuple[bytes, bytes]], query_string: str) -> str | None:
    """The bearer token of a WebSocket handshake: the Authorization header, else `access_token` in
    the query (RFC 6750 section 2.3), as browsers cannot set headers on a WebSocket."""
    values = [value for name, value in headers if name == b"authorization"]
    if values:
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        if len(values) == 1 and scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    tokens = [value for name, value in parse_qsl(query_string) if name == "access_token"]
    return tokens[0] if len(tokens) == 1 and tokens[0] else None


class EdgeHandshake:
    """Decides each upgrade request of `/v1/ws` (services/edge/ws/link.py's `Handshake`): the
    token, its tenant and the rate limits, then an accepted `Connection` or a close with a code."""

    def __init__(self, edge: Callable[[], EdgeContext]) -> None:
        self._edge = edge
        # The callers of the open connections by token, so that connections presenting one token
        # share one Caller: its token string (~1 KiB) and its Principal, a protobuf whose arena
        # costs ~1.6 KiB, would otherwise be held once per idle connection. The same token always
        # names the same principal; an entry lives only as long as a connection holds its caller.
        self._callers: weakref.WeakValueDictionary[str, Caller] = weakref.WeakValueDictionary()

    async def __call__(self, link: WebSocketLink, request: Request) -> None:
        request_id_var.set(new_request_id())
        edge = self._edge()
        if not edge.readiness.ready:  # services/edge/readiness.py: before any work is accepted
            link.accept_and_close(
                CloseCode.UNAVAILABLE, close_reason(not_ready_message(edge.readiness.not_ready))
            )
            return
        headers = [(name.lower(), value) for name, value in request.extra_headers]
        # Counted by source address as an HTTP request is (services/edge/source_limits.py): a
        # connect without a token against `source`, a bad token against `source_failures`.
        limits = edge.rate_limits
        forwarded = [value for name, value in headers if name == b"x-forwarded-for"]
        address = source_of(forwarded[-1] if forwarded else None, link.peer_host)
        token = connect_token(headers, request.target.partition("?")[2])
        if token is None:
            refused = limits.blocked(address)
            if refused is None:
                decision = await limits.check_source(address)
                refused = None if decision.admitted else decision
            if refused is not None:
                link.accept_and_close(CloseCode.RATE_LIMITED, close_reason(refusal(refused)))
                return
            link.accept_and_close(
                CloseCode.UNAUTHENTICATED, "send Authorization: Bearer <token> or ?access_token="
            )
            return
        try:
            claims = await edge.verifier.verify(token)
        except InvalidToken as exc:
            log.info("websocket token refused", extra={"reason": exc.reason})
            if limits.blocked(address) is None:  # before the client hears, so its retry finds it
                await limits.count_failure(address)
            link.accept_and_close(CloseCode.UNAUTHENTICATED, close_reason(f"invalid token: {exc.reason}"))
            return
        except Unavailable as exc:
            link.accept_and_close(CloseCode.UNAVAILABLE, close_reason(exc.message))
            return
        if claims.tenant_id is None:
            if limits.blocked(address) is None:
                await limits.count_failure(address)
            link.accept_and_close(CloseCode.UNAUTHENTICATED, "invalid token: missing_claim: tenant_id")
            return
        caller = self._callers.get(token)
        if caller is None:
            caller = self._callers[token] = Caller(token, principal_from_claims(claims))
        decision = await limits.check(caller)
        if not decision.admitted:
            link.accept_and_close(CloseCode.RATE_LIMITED, close_reason(refusal(decision)))
            return
        connection = Connection(edge, caller, link, _handshake_trace(headers))
        link.accept(connection)
        connection.start()


def _handshake_trace(headers: list[tuple[bytes, bytes]]) -> SpanContext | None:
    """The span context of the handshake's `traceparent` (tracing on): each action's span links to it."""
    if not tracing.enabled():
        return None
    found = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name in (b"traceparent", b"tracestate")
    }
    return tracing.span_context_of(found)
