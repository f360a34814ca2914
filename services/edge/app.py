"""The edge's ASGI application: REST, SSE, OpenAI-compatible and WebSocket routes in front of the mesh."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from http import HTTPStatus

import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from services.edge.a2a.routes import a2a_routes
from services.edge.auth import BearerAuthMiddleware
from services.edge.console import ConsoleFiles
from services.edge.context import EdgeContext, edge_context
from services.edge.errors import HttpError, error_response, rpc_error_response
from services.edge.middleware import RequestContextMiddleware
from services.edge.oauth import endpoints as oauth
from services.edge.rate_limits import RateLimitMiddleware
from services.edge.readiness import ReadinessMiddleware, health_response
from services.edge.rest import (
    agents,
    audio,
    audit,
    chat_completions,
    conversations,
    messages,
    models,
    plans,
    sse,
    tool_servers,
    usage,
    webhooks,
)
from services.edge.rest.openai_errors import OpenAIErrorShape
from services.edge.rest.rate_limit_status import ROUTES as RATE_LIMIT_ROUTES
from services.edge.routes import ApiRoute, openapi_document
from services.edge.settings import EdgeSettings
from services.edge.source_limits import SourceLimitMiddleware
from services.edge.unexpected_errors import UnexpectedErrorMiddleware
from services.edge.ws.gateway import WebSocketGateway
from services.runtime.metrics import HttpMetrics

API_TITLE = "MACP edge API"
API_VERSION = "v1"


def api_routes() -> list[ApiRoute]:
    return [
        *agents.ROUTES,
        *conversations.ROUTES,
        *tool_servers.ROUTES,
        *webhooks.ROUTES,
        *messages.ROUTES,
        *sse.ROUTES,
        *chat_completions.ROUTES,
        *audio.ROUTES,
        *models.ROUTES,
        *oauth.ROUTES,
        *RATE_LIMIT_ROUTES,
        *usage.ROUTES,
        *audit.ROUTES,
        *plans.ROUTES,
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.code, exc.message)


async def _rpc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, grpc.aio.AioRpcError)
    return rpc_error_response(exc)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(
        HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no route for {request.method} {request.url.path}"
    )


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    response = error_response(
        HTTPStatus.METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        f"{request.method} is not allowed on {request.url.path}",
    )
    # RFC 9110 section 15.5.6: a 405 lists the methods the path has. Each method of a path is a
    # route of its own, so they are gathered from every route the path matches, not the first.
    allowed: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            allowed |= route.methods or set()
    response.headers["allow"] = ", ".join(sorted(allowed))
    return response


def build_app(settings: EdgeSettings, metrics: HttpMetrics) -> Starlette:
    routes = api_routes()
    document = openapi_document(routes, title=API_TITLE, version=API_VERSION)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def healthz(request: Request) -> Response:
        edge = edge_context(request)
        return health_response(edge.readiness, edge.rate_limits.mode)

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.edge = await EdgeContext.open(settings, metrics.registry)
        try:
            yield
        finally:
            await app.state.edge.close()

    starlette_routes = [Route(r.path, r.handler, methods=[r.method]) for r in routes]
    starlette_routes += [
        Route("/v1/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
        *a2a_routes(),
    ]
    app = Starlette(
        routes=starlette_routes,
        lifespan=lifespan,
        exception_handlers={
            HttpError: _http_error,
            grpc.aio.AioRpcError: _rpc_error,
            404: _not_found,
            405: _method_not_allowed,
        },
    )
    # Added first, so it runs after authentication: a caller is counted by its client and tenant.
    app.add_middleware(RateLimitMiddleware, limits=lambda: app.state.edge.rate_limits)
    app.add_middleware(BearerAuthMiddleware, verifier=lambda: app.state.edge.verifier)
    # Before authentication: unauthenticated requests and failed ones are counted by source address.
    # Added before the request context, so it runs inside it (request id, access log, metrics).
    app.add_middleware(SourceLimitMiddleware, limits=lambda: app.state.edge.rate_limits)
    # Before any of the above: an edge that is not ready refuses at once, and counts nothing.
    app.add_middleware(ReadinessMiddleware, readiness=lambda: app.state.edge.readiness)
    # Outside all of those: the console's static files are public and served even when not ready.
    app.add_middleware(ConsoleFiles, directory=settings.console_dir)
    # Inside the request context, so a crash is answered with its request id and logged as a 500.
    app.add_middleware(UnexpectedErrorMiddleware)
    # Around every refusal the edge makes itself (a crash's 500 included): on the OpenAI-compatible
    # routes they are answered in OpenAI's error shape, which its SDKs read.
    app.add_middleware(OpenAIErrorShape)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, router=app.router)
    # Outermost: WebSockets are served by the edge's own protocol (services/edge/server.py); this
    # only tells a plain GET of /v1/ws to upgrade and refuses a WebSocket scope reaching the app.
    app.add_middleware(WebSocketGateway)
    return app
