"""The gateway's own credentials for an upstream: a STATIC header (its value sealed at rest, never
read back) and OAuth 2.0 client credentials at the upstream's own authorization server (here the
project's own token service, its token endpoint served over HTTP by the real edge)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as token_pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.example_tools.audience import RequireAudience
from services.example_tools.servers import forecast_for, weather_server
from services.runtime.auth.jwks import jwks_from_proto, keys_from_jwks
from services.runtime.errors import FailedPrecondition
from services.runtime.sealing import Sealer, decode_sealing_key
from services.runtime.settings import SettingsError
from services.tool_gateway.client_credentials import ClientCredentialsTokens
from services.tool_gateway.server_store import ServerStore
from services.tool_gateway.service import DEFINITION as TOOL_GATEWAY
from services.tool_gateway.settings import SEALING_KEY
from services.tool_gateway.upstream import UpstreamFailure
from services.tool_gateway.upstream_secrets import UpstreamSecrets, associated_data
from tests.asgi import serving
from tests.edge.conftest import serving_edge
from tests.runtime.serving import running
from tests.token.harness import RegisteredClient, unverified
from tests.tool_gateway.conftest import Caller, World, new_tenants, refused
from tests.tool_gateway.test_catalogue import call

API_KEY = "k3y-" + "s3cr3t" * 6


@pytest.fixture
async def world(module_world: World) -> AsyncIterator[World]:
    """The module's one gateway, as two tenants of this test's own; the test that counts the
    sealed credentials of the whole database runs a gateway of its own (`own_world`)."""
    async with new_tenants(module_world) as world:
        yield world


class RequireHeader:
    """Refuses (401) an HTTP request without `header: value`; counts the requests it let through."""

    def __init__(self, app: ASGIApp, header: str, value: str) -> None:
        self._app = app
        self._header = header.encode()
        self._value = value.encode()
        self.accepted = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(self._header) != self._value:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no key"})
            return
        if scope["type"] == "http":
            self.accepted += 1
        await self._app(scope, receive, send)


@dataclass
class Keyed:
    url: str
    apps: list[RequireHeader] = field(default_factory=list)


@pytest.fixture
async def keyed() -> AsyncIterator[Keyed]:
    """The weather server, answering only requests with `x-api-key: API_KEY`."""
    found = Keyed("")

    def build(_url: str) -> ASGIApp:
        app = RequireHeader(weather_server().streamable_http_app(), "x-api-key", API_KEY)
        found.apps.append(app)
        return app

    async with serving(build) as url:
        found.url = f"{url}/mcp"
        yield found


async def register_static(caller: Caller, name: str, url: str, header: str, value: str) -> pb.ToolServer:
    server = pb.ToolServer(
        name=name,
        url=url,
        auth=pb.UPSTREAM_AUTH_STATIC,
        static_credential=pb.StaticCredential(header=header, value=value),
    )
    reply = await caller.stub.CreateToolServer(pb.CreateToolServerRequest(tool_server=server))
    return reply.tool_server


async def test_a_static_server_gets_its_header_and_its_value_is_never_read_back(
    world: World, keyed: Keyed
) -> None:
    created = await register_static(world.alice, "weather", keyed.url, "X-API-Key", API_KEY)
    catalogue = await world.alice.stub.ListTools(pb.ListToolsRequest())
    assert [t.name for t in catalogue.tools] == ["weather__forecast"], catalogue.unavailable
    answer = await world.alice.stub.CallTool(call("weather__forecast", city="Oslo"))
    assert answer.text == forecast_for("Oslo")
    assert keyed.apps[0].accepted > 0

    got = (await world.alice.stub.GetToolServer(pb.GetToolServerRequest(id=created.id))).tool_server
    listed = (await world.alice.stub.ListToolServers(pb.ListToolServersRequest())).tool_servers
    for read in (created, got, *listed):
        assert read.auth == pb.UPSTREAM_AUTH_STATIC
        assert read.static_credential == pb.StaticCredential(header="x-api-key")  # stored lower case
        assert API_KEY.encode() not in read.SerializeToString()

    async with database(world) as db:
        row = await db.fetchrow("SELECT * FROM tool_gateway_servers WHERE id = $1", uuid.UUID(created.id))
        audit_rows = await db.fetch("SELECT * FROM audit_events")
    assert row is not None
    assert all(API_KEY not in str(value) for value in row.values())
    assert API_KEY.encode() not in row["sealed_secret"]
    sealer = Sealer(decode_sealing_key(world.environ[SEALING_KEY]))
    assert sealer.open(row["sealed_secret"], associated_data(created.id, pb.UPSTREAM_AUTH_STATIC)) == (
        API_KEY.encode()
    )
    assert audit_rows
    assert all(API_KEY not in str(dict(audit)) for audit in audit_rows)


async def test_a_wrong_static_value_is_refused_by_the_upstream(world: World, keyed: Keyed) -> None:
    await register_static(world.alice, "weather", keyed.url, "x-api-key", "not-the-key")
    error = await refused(world.alice.stub.CallTool(call("weather__forecast", city="Oslo")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "tool server weather" in (error.details() or "")
    assert "HTTP 401" in (error.details() or "")


def creating(server: pb.ToolServer) -> pb.CreateToolServerRequest:
    return pb.CreateToolServerRequest(tool_server=server)


STATIC = pb.UPSTREAM_AUTH_STATIC
# (the credential, the auth mode, what the error says after `tool_server.`)
BAD_STATIC: list[tuple[pb.StaticCredential | None, pb.UpstreamAuth.ValueType, str]] = [
    (pb.StaticCredential(header="host", value="x"), STATIC, "static_credential.header: host is a header"),
    (
        pb.StaticCredential(header="mcp-session-id", value="x"),
        STATIC,
        "static_credential.header: mcp-session-id",
    ),
    (pb.StaticCredential(header="x key", value="x"), STATIC, "static_credential.header: not an HTTP header"),
    (pb.StaticCredential(header="x-key"), STATIC, "static_credential.value: value is required"),
    (pb.StaticCredential(header="x-key", value="a\r\nb"), STATIC, "static_credential.value: must be visible"),
    (None, STATIC, "static_credential.header: value is required"),
    (
        pb.StaticCredential(header="x-key", value="x"),
        pb.UPSTREAM_AUTH_NONE,
        "static_credential: only a server",
    ),
]


async def test_a_bad_static_credential_is_invalid_naming_the_field(world: World) -> None:
    for credential, auth, expected in BAD_STATIC:
        server = pb.ToolServer(name="weather", url=world.weather_url, auth=auth, static_credential=credential)
        error = await refused(world.alice.stub.CreateToolServer(creating(server)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
        assert f"tool_server.{expected}" in (error.details() or "")


async def test_the_gateway_does_not_start_without_the_key_that_opens_its_credentials(
    own_world: World, keyed: Keyed
) -> None:
    world = own_world  # "1 tool server(s)": no other test's servers in its database
    created = await register_static(world.alice, "weather", keyed.url, "x-api-key", API_KEY)
    other = {**world.environ, SEALING_KEY: base64.urlsafe_b64encode(b"\x07" * 32).decode()}
    missing = {name: value for name, value in world.environ.items() if name != SEALING_KEY}
    malformed = {**world.environ, SEALING_KEY: "too-short"}
    for environ, expected in (
        (other, f"{SEALING_KEY} does not open the credential of tool server weather ({created.id})"),
        (missing, f"{SEALING_KEY} is not set, but 1 tool server(s) keep sealed credentials"),
        (malformed, f"{SEALING_KEY} is malformed"),
    ):
        with pytest.raises(SettingsError) as stopped:
            async with running(TOOL_GATEWAY, {**environ, "MACP_TOOL_GATEWAY_PORT": "0"}):
                pass
        assert str(stopped.value).startswith(expected)
        assert API_KEY not in str(stopped.value)
        assert "\n" not in str(stopped.value)


async def test_a_gateway_without_the_key_keeps_no_credential(world: World) -> None:
    async with asyncpg.create_pool(world.environ["MACP_DATABASE_URL"], min_size=1, max_size=1) as pool:
        keyless = UpstreamSecrets(ServerStore(pool), None)
        with pytest.raises(FailedPrecondition) as refused:
            keyless.seal(str(uuid.uuid4()), pb.UPSTREAM_AUTH_STATIC, API_KEY)
    expected = f"tool_server.auth: this gateway keeps no credentials: {SEALING_KEY} is not set"
    assert refused.value.message.startswith(expected)


# --- client credentials ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizationServer:
    token_url: str
    client: RegisteredClient
    audience: str  # what the client's tokens are addressed to
    upstream_url: str
    upstream: RequireAudience


@pytest.fixture
async def authorization_server(world: World) -> AsyncIterator[AuthorizationServer]:
    """The edge's /oauth2/token over the real token service, a confidential client of Alice's tenant
    allowed client_credentials there, and the weather server accepting only that client's tokens
    (verified with the token service's JWKS, for the audience they carry)."""
    harness = world.tokens.harness
    client = await harness.register(
        client_class=principal_pb2.CLIENT_CLASS_PARTNER,
        grant_types=("client_credentials",),
        scope="tools:read",
        tenant_id=world.alice.tenant_id,
        name="weather upstream client",
    )
    sample = (await harness.client_token(client, "tools:read")).access_token
    audience = unverified(sample)[1]["aud"]
    audience = audience[0] if isinstance(audience, list) else audience

    async def keys() -> Mapping[str, rsa.RSAPublicKey]:
        return keys_from_jwks(jwks_from_proto(await harness.stub.GetJwks(token_pb.GetJwksRequest())))

    built: list[RequireAudience] = []

    def build(_url: str) -> RequireAudience:
        app = RequireAudience(
            weather_server().streamable_http_app(),
            audience=audience,
            issuer=world.tokens.environ["MACP_TOKEN_ISSUER"],
            keys=keys,
        )
        built.append(app)
        return app

    edge_environ = {
        **world.environ,
        "MACP_EDGE_RPC_TIMEOUT_SECONDS": "5",
        "MACP_RATE_LIMIT_SOURCE": "10000/min",
    }
    async with serving_edge(edge_environ) as edge_url, serving(build) as upstream_url:
        yield AuthorizationServer(
            f"{edge_url}/oauth2/token", client, audience, f"{upstream_url}/mcp", built[0]
        )


async def register_oauth(
    caller: Caller, name: str, server: AuthorizationServer, secret: str
) -> pb.ToolServer:
    registration = pb.ToolServer(
        name=name,
        url=server.upstream_url,
        auth=pb.UPSTREAM_AUTH_CLIENT_CREDENTIALS,
        client_credentials=pb.OAuthClientCredentials(
            token_url=server.token_url,
            client_id=server.client.client_id,
            client_secret=secret,
            scope="tools:read",
        ),
    )
    reply = await caller.stub.CreateToolServer(pb.CreateToolServerRequest(tool_server=registration))
    return reply.tool_server


async def test_client_credentials_get_one_token_for_the_server_from_its_authorization_server(
    world: World, authorization_server: AuthorizationServer
) -> None:
    secret = authorization_server.client.client_secret
    created = await register_oauth(world.alice, "weather", authorization_server, secret)
    assert created.client_credentials == pb.OAuthClientCredentials(
        token_url=authorization_server.token_url,
        client_id=authorization_server.client.client_id,
        scope="tools:read",
    )
    catalogue = await world.alice.stub.ListTools(pb.ListToolsRequest())
    assert [t.name for t in catalogue.tools] == ["weather__forecast"], catalogue.unavailable
    for city in ("Oslo", "Lima"):
        answer = await world.alice.stub.CallTool(call("weather__forecast", city=city))
        assert answer.text == forecast_for(city)

    received = authorization_server.upstream.received
    assert received, "the upstream accepted no token"
    # One token served the listing and both calls: the client's own, for the tenant, its scope only.
    assert len({claims.jti for claims in received}) == 1
    [claims] = {claims.jti: claims for claims in received}.values()
    assert claims.client_id == authorization_server.client.client_id
    assert (claims.tenant_id, claims.scopes) == (world.alice.tenant_id, ("tools:read",))
    assert claims.aud == (authorization_server.audience,)
    listed = (await world.alice.stub.ListToolServers(pb.ListToolServersRequest())).tool_servers
    for read in (created, *listed):
        assert secret.encode() not in read.SerializeToString()

    # A new registration of the server gets a token of its own.
    await world.alice.stub.DeleteToolServer(pb.DeleteToolServerRequest(id=created.id))
    await register_oauth(world.alice, "weather", authorization_server, secret)
    await world.alice.stub.CallTool(call("weather__forecast", city="Oslo"))
    assert len({claims.jti for claims in received}) == 2


async def test_a_refused_client_secret_fails_the_server_naming_it(
    world: World, authorization_server: AuthorizationServer
) -> None:
    await register_oauth(world.alice, "weather", authorization_server, "not-the-secret")
    error = await refused(world.alice.stub.CallTool(call("weather__forecast", city="Oslo")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    details = error.details() or ""
    assert details.startswith(
        f"no token for tool server weather could be had from {authorization_server.token_url}"
    )
    assert "HTTP 401: invalid_client" in details
    assert "not-the-secret" not in details
    catalogue = await world.alice.stub.ListTools(pb.ListToolsRequest())
    assert [u.server_name for u in catalogue.unavailable] == ["weather"]
    assert not authorization_server.upstream.received


GRANT = {"token_url": "http://as.example/token", "client_id": "c", "client_secret": "s"}
BAD_GRANTS: list[tuple[dict[str, str], str]] = [
    ({**GRANT, "token_url": ""}, "tool_server.client_credentials.token_url: value is required"),
    ({**GRANT, "client_id": ""}, "tool_server.client_credentials.client_id: value is required"),
    ({**GRANT, "client_secret": ""}, "tool_server.client_credentials.client_secret: value is required"),
    ({**GRANT, "scope": "a  b"}, "tool_server.client_credentials.scope: scope tokens"),
    ({**GRANT, "resource": "https://x.example/#f"}, "tool_server.client_credentials.resource:"),
]


async def test_a_bad_client_credentials_grant_is_invalid_naming_the_field(world: World) -> None:
    for fields, expected in BAD_GRANTS:
        server = pb.ToolServer(
            name="weather",
            url=world.weather_url,
            auth=pb.UPSTREAM_AUTH_CLIENT_CREDENTIALS,
            client_credentials=pb.OAuthClientCredentials(**fields),
        )
        error = await refused(
            world.alice.stub.CreateToolServer(pb.CreateToolServerRequest(tool_server=server))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
        assert expected in (error.details() or "")


@asynccontextmanager
async def database(world: World) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(world.environ["MACP_DATABASE_URL"])
    try:
        yield connection
    finally:
        await connection.close()


class TokenEndpoint:
    """A token endpoint at /token that issues `t1`, `t2`, ... each for 40 s, and keeps what each
    request sent."""

    def __init__(self, unavailable: int = 0) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.unavailable = unavailable  # how many requests to answer 503 first
        self.app = Starlette(routes=[Route("/token", self.token, methods=["POST"])])

    async def token(self, request: Request) -> JSONResponse:
        form = {key: str(value) for key, value in (await request.form()).items()}
        self.requests.append((request.headers.get("authorization", ""), form))
        if len(self.requests) <= self.unavailable:
            return JSONResponse(
                {"error": "temporarily_unavailable"}, status_code=503, headers={"retry-after": "1"}
            )
        return JSONResponse(
            {"access_token": f"t{len(self.requests)}", "token_type": "bearer", "expires_in": 40}
        )


async def test_a_token_is_reused_until_shortly_before_it_expires() -> None:
    now = [1000.0]
    tokens = ClientCredentialsTokens(timeout_seconds=3, clock=lambda: now[0])
    endpoint = TokenEndpoint()
    async with serving(lambda _url: endpoint.app) as url:
        grant = pb.OAuthClientCredentials(
            token_url=f"{url}/token", client_id="gateway:1", scope="a b", resource="https://mcp.example/"
        )
        server = pb.ToolServer(id=str(uuid.uuid4()), etag="e1", name="s", client_credentials=grant)
        assert await tokens.token(server, "p@ss word") == "t1"
        now[0] += 19  # 40 s tokens are used for 20 s (half their life, for so short a one)
        assert await tokens.token(server, "p@ss word") == "t1"
        now[0] += 2
        assert await tokens.token(server, "p@ss word") == "t2"
        server.etag = "e2"  # a new registration: a token of its own
        assert await tokens.token(server, "p@ss word") == "t3"
    authorization, form = endpoint.requests[0]
    # client_secret_basic, the id and secret form-urlencoded first (RFC 6749 2.3.1).
    assert authorization == "Basic " + base64.b64encode(b"gateway%3A1:p%40ss+word").decode()
    assert form == {"grant_type": "client_credentials", "scope": "a b", "resource": "https://mcp.example/"}


async def test_a_momentary_503_is_asked_once_more_and_a_lasting_one_fails_naming_it() -> None:
    grant = pb.OAuthClientCredentials(token_url="", client_id="gateway:1")
    blip = TokenEndpoint(unavailable=1)
    async with serving(lambda _url: blip.app) as url:
        grant.token_url = f"{url}/token"
        server = pb.ToolServer(id=str(uuid.uuid4()), etag="e1", name="s", client_credentials=grant)
        started = time.monotonic()
        assert await ClientCredentialsTokens(timeout_seconds=3).token(server, "secret") == "t2"
    assert len(blip.requests) == 2
    assert time.monotonic() - started >= 1.0, "asked again before the Retry-After"
    down = TokenEndpoint(unavailable=10)
    async with serving(lambda _url: down.app) as url:
        grant.token_url = f"{url}/token"
        server = pb.ToolServer(id=str(uuid.uuid4()), etag="e1", name="s", client_credentials=grant)
        with pytest.raises(UpstreamFailure) as failure:
            await ClientCredentialsTokens(timeout_seconds=3).token(server, "secret")
    assert "it answered HTTP 503: temporarily_unavailable" in str(failure.value)
    assert len(down.requests) == 2  # once more, not on and on
