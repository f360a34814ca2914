"""The attack suite against the running system: every forged token of `tests/auth/attacks.py`, and
real tokens misused (wrong audience, bad signature, tampered claims, revoked), are refused at the edge
(401 with `WWW-Authenticate: Bearer error="invalid_token"`) and at each service's own gRPC port
(UNAUTHENTICATED); a valid token without the scope a method needs is PERMISSION_DENIED; and the
principal a handler acts as comes from the token, never from the request.

The forged tokens are signed with keys of our own (the token service's are sealed in its database),
so besides the check each attack names, an unknown key stops them too; the tests here assert the
outcome at each hop, the unit suites (tests/auth) assert the exact reason.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as proxy_grpc
from macp.common.v1 import principal_pb2
from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as orchestrator_pb
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as orchestrator_grpc
from macp.token.v1 import token_service_pb2 as token_pb
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from services.agent_proxy.service import DEFINITION as AGENT_PROXY
from services.metering.service import DEFINITION as METERING
from services.orchestrator.service import DEFINITION as ORCHESTRATOR
from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from services.runtime.server import ServiceDefinition
from tests.auth.attacks import ATTACKS, keyring
from tests.e2e.conftest import Slice
from tests.runtime.serving import channel, running
from tests.token.harness import b64url, b64url_decode
from tests.tokens import ALL_SCOPES, TokenWorld, bearer, token_world

pytestmark = pytest.mark.integration


@pytest.fixture
async def mesh_slice(module_slice: Slice) -> Slice:
    """The module's one slice, as a tenant of this test's own: no test here needs a slice to itself."""
    return await module_slice.with_new_tenant()


CONVERSATION_AUDIENCE = service_audience("conversation")


@functools.cache
def _forged() -> dict[str, str]:
    """Each catalogued attack's token, by name."""
    new = functools.partial(rsa.generate_private_key, public_exponent=65537, key_size=2048)
    keys = keyring(new(), new(), new())
    return {attack.name: attack.build(keys) for attack in ATTACKS}


def _flip_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    flipped = bytearray(b64url_decode(signature))
    flipped[-1] ^= 1
    return f"{head}.{payload}.{b64url(bytes(flipped))}"


def _with_tenant(token: str, tenant_id: str) -> str:
    head, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["tenant_id"] = tenant_id
    return f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"


async def _misused(
    tokens: TokenWorld, slice_: Slice | None, audience: str, other_audience: str
) -> dict[str, str]:
    """Real tokens of the token service, each unusable for `audience`."""
    tenant = slice_.tenant if slice_ is not None else await tokens.tenant()
    good = await tokens.user_token(tenant, [audience])
    revoked = await tokens.user_token(tenant, [audience])
    await tokens.revoke(tenant, revoked)
    return {
        "real token for another audience": await tokens.user_token(tenant, [other_audience]),
        "real token with its signature bit-flipped": _flip_signature(good),
        "real token claiming another tenant": _with_tenant(good, "someone-else"),
        "real token, revoked": revoked,
    }


async def _refused_tokens(
    tokens: TokenWorld, slice_: Slice | None, audience: str, other: str
) -> dict[str, str]:
    return {**_forged(), **await _misused(tokens, slice_, audience, other)}


# --- at the edge --------------------------------------------------------------------------------------


async def test_the_edge_refuses_a_missing_or_bad_token_with_401(mesh_slice: Slice) -> None:
    refused = await _refused_tokens(mesh_slice.tokens, mesh_slice, EDGE_AUDIENCE, CONVERSATION_AUDIENCE)
    headers: list[tuple[str, Mapping[str, str]]] = [
        ("no authorization header", {"authorization": ""}),
        ("not a bearer", {"authorization": "Basic YTpi"}),
        *((name, {"authorization": f"Bearer {token}"}) for name, token in refused.items()),
    ]
    async with mesh_slice.client() as client:
        for name, header in headers:
            for method, path in (("GET", f"/v1/agents/{uuid.uuid4()}"), ("POST", "/v1/agents")):
                sent = {key: value for key, value in header.items() if value}
                if not sent:
                    del client.headers["authorization"]
                else:
                    client.headers.update(sent)
                response = await client.request(method, path, json={"name": "x"})
                assert response.status_code == 401, (name, method, response.text)
                assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', name
                body = response.json()
                assert set(body) == {"code", "message", "request_id"}, name
                assert body["code"] == "UNAUTHENTICATED", name
                client.headers["authorization"] = f"Bearer {mesh_slice.edge_token}"
        # Discovery, health, the OpenAPI document and the OAuth endpoints stay public.
        del client.headers["authorization"]
        for path in ("/healthz", "/v1/openapi.json", "/.well-known/oauth-authorization-server"):
            assert (await client.get(path)).status_code == 200, path


async def test_a_token_without_the_write_scope_is_forbidden_at_the_edge(mesh_slice: Slice) -> None:
    reader = await mesh_slice.tokens.user_token(mesh_slice.tenant, [EDGE_AUDIENCE], "conversations:read")
    async with mesh_slice.client(reader) as client:
        created = await client.post("/v1/agents", json={"name": "Ada", "provider": "local", "model": "m"})
        missing = await client.get(f"/v1/agents/{uuid.uuid4()}")
    assert created.status_code == 403, created.text
    assert created.json()["code"] == "PERMISSION_DENIED"
    assert "conversations:write" in created.json()["message"]
    assert missing.status_code == 404  # reading is allowed


async def test_another_tenants_agent_is_not_found_and_the_body_cannot_choose_the_tenant(
    mesh_slice: Slice,
) -> None:
    # The contract ignores output-only fields on input: the body cannot choose the tenant or owner.
    agent = {"name": "Ada", "provider": "local", "model": "m", "tenantId": "someone-else", "ownerId": "x"}
    async with mesh_slice.client() as client:
        created = await client.post("/v1/agents", json=agent)
    assert created.status_code == 201, created.text
    assert created.json()["tenantId"] == mesh_slice.tenant.tenant_id
    assert created.json()["ownerId"] not in ("", "x")

    other = await mesh_slice.tokens.tenant()
    other_token = await mesh_slice.tokens.user_token(other, [EDGE_AUDIENCE])
    async with mesh_slice.client(other_token) as client:
        hidden = await client.get(f"/v1/agents/{created.json()['id']}")
    assert hidden.status_code == 404, hidden.text


# --- against each service's gRPC port directly ----------------------------------------------------------


async def _refusal(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


async def _assert_refused(call: Awaitable[Any], code: grpc.StatusCode, name: str) -> None:
    error = await _refusal(call)
    assert error.code() == code, (name, error.details())


async def test_the_conversation_port_refuses_every_bad_token(mesh_slice: Slice) -> None:
    refused = await _refused_tokens(mesh_slice.tokens, mesh_slice, CONVERSATION_AUDIENCE, EDGE_AUDIENCE)
    async with channel(mesh_slice.conversation_port) as opened:
        stub = pb_grpc.ConversationServiceStub(opened)
        request = pb.GetAgentRequest(id=str(uuid.uuid4()))
        await _assert_refused(stub.GetAgent(request), grpc.StatusCode.UNAUTHENTICATED, "no token")
        for name, token in refused.items():
            await _assert_refused(
                stub.GetAgent(request, metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED, name
            )
        good = await mesh_slice.tokens.user_token(mesh_slice.tenant, [CONVERSATION_AUDIENCE])
        await _assert_refused(
            stub.GetAgent(request, metadata=bearer(good)), grpc.StatusCode.NOT_FOUND, "valid"
        )


async def test_the_conversation_port_needs_the_methods_scope(mesh_slice: Slice) -> None:
    tokens, tenant = mesh_slice.tokens, mesh_slice.tenant
    reader = await tokens.user_token(tenant, [CONVERSATION_AUDIENCE], "conversations:read")
    writer = await tokens.user_token(tenant, [CONVERSATION_AUDIENCE], "conversations:write")
    agent = pb.Agent(name="Ada", provider="local", model="m")
    async with channel(mesh_slice.conversation_port) as opened:
        stub = pb_grpc.ConversationServiceStub(opened)
        await _assert_refused(
            stub.CreateAgent(pb.CreateAgentRequest(agent=agent), metadata=bearer(reader)),
            grpc.StatusCode.PERMISSION_DENIED,
            "read-only token writing",
        )
        created = await stub.CreateAgent(pb.CreateAgentRequest(agent=agent), metadata=bearer(writer))
        await _assert_refused(
            stub.GetAgent(pb.GetAgentRequest(id=created.agent.id), metadata=bearer(writer)),
            grpc.StatusCode.PERMISSION_DENIED,
            "write-only token reading",
        )
        fetched = await stub.GetAgent(pb.GetAgentRequest(id=created.agent.id), metadata=bearer(reader))
    assert fetched.agent.tenant_id == tenant.tenant_id


async def test_the_token_services_admin_rpcs_refuse_every_bad_token(mesh_slice: Slice) -> None:
    tokens = mesh_slice.tokens
    refused = await _refused_tokens(tokens, mesh_slice, service_audience("token"), EDGE_AUDIENCE)
    async with channel(tokens.port) as opened:
        stub = token_grpc.TokenServiceStub(opened)
        # A valid request, so that only the bearer token can stop it.
        request = token_pb.CreateTenantRequest(tenant_id="intruder", tier=principal_pb2.TIER_PRO)
        await _assert_refused(stub.CreateTenant(request), grpc.StatusCode.UNAUTHENTICATED, "no token")
        for name, token in refused.items():
            await _assert_refused(
                stub.CreateTenant(request, metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED, name
            )
        # Its public RPCs stay open: no token is needed to get the keys that verify tokens.
        assert (await stub.GetJwks(token_pb.GetJwksRequest())).keys


Metadata = tuple[tuple[str, str], ...]
Call = Callable[[Metadata], Awaitable[Any]]


@pytest.mark.parametrize("definition", [ORCHESTRATOR, AGENT_PROXY, METERING], ids=lambda d: d.spec.name)
async def test_every_other_services_port_refuses_every_bad_token(
    service_environ: dict[str, str], definition: ServiceDefinition
) -> None:
    name = definition.spec.name
    audience = service_audience(name)
    async with token_world(service_environ) as tokens:
        prefix = definition.spec.env_prefix
        environ = tokens.service_environ(
            {**service_environ, f"{prefix}PORT": "0", f"{prefix}METRICS_PORT": "0"}
        )
        refused = await _refused_tokens(tokens, None, audience, EDGE_AUDIENCE)
        # agents:generate: agent-proxy's Bid needs it (services/agent_proxy/service.py).
        tenant = await tokens.tenant(scope=f"{ALL_SCOPES} agents:generate")
        good = await tokens.user_token(tenant, [audience])
        async with running(definition, environ) as service, channel(service.port) as opened:
            call = _unary_call(name, opened)
            await _assert_refused(call(()), grpc.StatusCode.UNAUTHENTICATED, "no token")
            for attack, token in refused.items():
                await _assert_refused(call(bearer(token)), grpc.StatusCode.UNAUTHENTICATED, attack)
            # A valid token gets past authentication (to validation, or the RPC not built yet).
            passed = await _refusal(call(bearer(good)))
            assert passed.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT)


def _unary_call(name: str, opened: grpc.aio.Channel) -> Call:
    """One unary RPC of the service `name`, sent with the given metadata."""
    if name == "agent-proxy":
        proxy = proxy_grpc.AgentProxyServiceStub(opened)
        return lambda metadata: proxy.Bid(proxy_pb.BidRequest(), metadata=metadata, timeout=10)
    if name == "metering":
        metering = metering_grpc.MeteringServiceStub(opened)
        return lambda metadata: metering.GetUsage(
            metering_pb.GetUsageRequest(), metadata=metadata, timeout=10
        )
    orchestrator = orchestrator_grpc.OrchestratorServiceStub(opened)
    return lambda metadata: orchestrator.PostMessage(
        orchestrator_pb.PostMessageRequest(), metadata=metadata, timeout=10
    )


async def test_the_conversation_port_serves_the_tokens_tenant_only(mesh_slice: Slice) -> None:
    tokens = mesh_slice.tokens
    mine = await tokens.user_token(mesh_slice.tenant, [CONVERSATION_AUDIENCE])
    other = await tokens.user_token(await tokens.tenant(), [CONVERSATION_AUDIENCE])
    # Output-only fields in the request are ignored: the principal comes from the token.
    agent = pb.Agent(name="Ada", provider="local", model="m", tenant_id="someone-else", owner_id="x")
    async with channel(mesh_slice.conversation_port) as opened:
        stub = pb_grpc.ConversationServiceStub(opened)
        created = (await stub.CreateAgent(pb.CreateAgentRequest(agent=agent), metadata=bearer(mine))).agent
        assert created.tenant_id == mesh_slice.tenant.tenant_id
        assert created.owner_id not in ("", "x")
        hidden = stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=bearer(other))
        await _assert_refused(hidden, grpc.StatusCode.NOT_FOUND, "another tenant's agent")
