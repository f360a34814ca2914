"""An outside A2A v1.0 agent for the agent proxy to call: the official SDK's server (an executor,
`DefaultRequestHandler` over the in-memory task store, its Starlette JSON-RPC and card routes) under
uvicorn on a loopback port, with an OAuth token endpoint of its own.

The remote side registers one client (`CLIENT_ID` / `CLIENT_SECRET`): its token endpoint issues a
bearer token to that client alone (client_secret_basic), and the JSON-RPC endpoint refuses a call
without one it issued, so a turn that reaches the executor proves the agent proxy opened the sealed
secret and got a token with it. The card is public, as A2A's well-known card is.

`Scripted` is the executor: it streams its answer as several artifact chunks, reports its usage
under the usage extension (or none), fails when told, and notes every message it got and every
task it was asked to cancel.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from a2a.helpers.proto_helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import a2a_pb2 as a2a
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.runtime.a2a_usage import USAGE_EXTENSION_URI
from tests.asgi import serving

CLIENT_ID = "macp-at-remote"
CLIENT_SECRET = "remote-registered-secret"
CARD_PATH = "/.well-known/agent-card.json"
RPC_PATH = "/a2a"


@dataclass
class Scripted(AgentExecutor):
    """The remote agent's behaviour, set by each test before its round."""

    chunks: list[str] = field(default_factory=lambda: ["The remote ", "answers ", "in chunks."])
    pace_seconds: float = 0.1
    usage: dict[str, Any] | None = field(default_factory=lambda: {"inputTokens": 321, "outputTokens": 123})
    fail: bool = False
    received: list[a2a.Message] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    cancel_seen: asyncio.Event = field(default_factory=asyncio.Event)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        self.received.append(context.message)
        task = context.current_task or new_task_from_user_message(context.message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        if self.fail:
            raise RuntimeError("the remote agent broke")
        artifact_id = str(uuid.uuid4())
        for index, chunk in enumerate(self.chunks):
            await updater.add_artifact(
                [a2a.Part(text=chunk)],
                artifact_id=artifact_id,
                append=index > 0,
                last_chunk=index == len(self.chunks) - 1,
            )
            await asyncio.sleep(self.pace_seconds)
        metadata = None if self.usage is None else {USAGE_EXTENSION_URI: self.usage}
        await updater.update_status(a2a.TASK_STATE_COMPLETED, metadata=metadata)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None
        assert context.context_id is not None
        self.cancelled.append(context.task_id)
        self.cancel_seen.set()
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


@dataclass(frozen=True)
class TrustedIssuer:
    """A remote that also takes MACP's own tokens addressed to it (the token exchange mode): the
    issuer's JWKS, and the audience such a token must name."""

    jwks: dict[str, Any]
    audience: str

    def claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this issuer signed for `audience`, else None."""
        try:
            header = jwt.get_unverified_header(token)
            key = jwt.PyJWKSet.from_dict(self.jwks)[header["kid"]]
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[header["alg"]], audience=self.audience
            )
        except (jwt.PyJWTError, KeyError):
            return None
        return claims


class RequireIssuedToken:
    """Refuses a JSON-RPC call without a bearer token the remote's token endpoint issued, or one
    its trusted issuer signed for it (401); keeps the claims of the trusted ones it took."""

    def __init__(self, app: ASGIApp, issued: set[str], trusted: TrustedIssuer | None = None) -> None:
        self._app = app
        self._issued = issued
        self._trusted = trusted
        self.refused = 0
        self.trusted_claims: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == RPC_PATH:
            headers = dict(scope["headers"])
            token = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
            claims = self._trusted.claims(token) if self._trusted is not None else None
            if claims is not None:
                self.trusted_claims.append(claims)
            elif token not in self._issued:
                self.refused += 1
                await JSONResponse({"error": "invalid_token"}, status_code=401)(scope, receive, send)
                return
        await self._app(scope, receive, send)


@dataclass
class RemoteAgentServer:
    url: str
    executor: Scripted
    guard: RequireIssuedToken

    @property
    def card_url(self) -> str:
        return f"{self.url}{CARD_PATH}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"


def _card(url: str) -> a2a.AgentCard:
    return a2a.AgentCard(
        name="Outsider",
        description="An outside A2A agent that answers in chunks",
        supported_interfaces=[
            a2a.AgentInterface(url=f"{url}{RPC_PATH}", protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        version="1",
        capabilities=a2a.AgentCapabilities(
            streaming=True, extensions=[a2a.AgentExtension(uri=USAGE_EXTENSION_URI)]
        ),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[a2a.AgentSkill(id="answer", name="answer", description="answers", tags=["chat"])],
    )


def _token_endpoint(issued: set[str]) -> Route:
    expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()

    async def token(request: Request) -> Response:
        form = await request.form()
        if request.headers.get("authorization") != expected:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        value = secrets.token_urlsafe(24)
        issued.add(value)
        return JSONResponse({"access_token": value, "token_type": "Bearer", "expires_in": 300})

    return Route("/token", token, methods=["POST"])


@asynccontextmanager
async def serving_remote_agent(
    executor: Scripted | None = None, port: int = 0, trusted: TrustedIssuer | None = None
) -> AsyncIterator[RemoteAgentServer]:
    """The remote agent at a loopback URL until the block ends (`port` serves a restarted one where
    the last one was)."""
    script = executor or Scripted()
    issued: set[str] = set()
    guards: list[RequireIssuedToken] = []

    def build(url: str) -> ASGIApp:
        card = _card(url)
        handler = DefaultRequestHandler(
            agent_executor=script, task_store=InMemoryTaskStore(), agent_card=card
        )
        routes = [
            *create_agent_card_routes(card, card_url=CARD_PATH),
            *create_jsonrpc_routes(handler, RPC_PATH),
            _token_endpoint(issued),
        ]
        guards.append(RequireIssuedToken(Starlette(routes=routes), issued, trusted))
        return guards[-1]

    async with serving(build, port) as url:
        yield RemoteAgentServer(url, script, guards[0])
