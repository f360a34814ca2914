"""The example MCP servers (services/example_tools), served by uvicorn on loopback ports the OS picks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa
from macp.token.v1 import token_service_pb2 as token_pb
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from services.example_tools.audience import Keys, RequireAudience
from services.example_tools.servers import calculator_server, weather_server
from services.runtime.auth.jwks import jwks_from_proto, keys_from_jwks
from tests.asgi import serving


@asynccontextmanager
async def serving_examples() -> AsyncIterator[tuple[str, str]]:
    """The weather and calculator servers' MCP endpoints, for as long as the block runs."""
    async with (
        serving(lambda _url: weather_server().streamable_http_app()) as weather,
        serving(lambda _url: calculator_server().streamable_http_app()) as calculator,
    ):
        yield f"{weather}/mcp", f"{calculator}/mcp"


@dataclass(frozen=True)
class Guarded:
    """An example server that accepts only MACP tokens addressed to its own URL (`server.received`
    holds the claims of each it accepted)."""

    url: str
    server: RequireAudience


@asynccontextmanager
async def serving_guarded_weather(keys: Keys, issuer: str) -> AsyncIterator[Guarded]:
    """The weather server behind its audience check, verifying with `keys`."""
    built: list[RequireAudience] = []

    def build(url: str) -> RequireAudience:
        app = RequireAudience(
            weather_server().streamable_http_app(), audience=f"{url}/mcp", issuer=issuer, keys=keys
        )
        built.append(app)
        return app

    async with serving(build) as url:
        yield Guarded(f"{url}/mcp", built[0])


def grpc_keys(token_stub: token_grpc.TokenServiceStub) -> Keys:
    """The token service's keys read over gRPC (a test without an edge serving its JWKS)."""

    async def keys() -> Mapping[str, rsa.RSAPublicKey]:
        return keys_from_jwks(jwks_from_proto(await token_stub.GetJwks(token_pb.GetJwksRequest())))

    return keys
