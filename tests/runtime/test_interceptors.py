"""The interceptors over a real grpc.aio server: request ids, validation, error mapping, access log,
and the authentication hook, each seen from a client the way a caller sees it."""

from __future__ import annotations

import dataclasses
import re
import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as proxy_grpc
from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc
from redis.exceptions import ConnectionError as RedisConnectionError

from services.conversation.service import DEFINITION as CONVERSATION
from services.runtime.context import REQUEST_ID_HEADER, RpcContext
from services.runtime.errors import Unauthenticated
from services.runtime.interceptors import AdmitAll
from services.runtime.principal import Principal
from services.runtime.server import ServiceDefinition, unbuilt_service
from tests.runtime.serving import (
    PROBE_ENVIRON,
    PROBE_SPEC,
    captured_json_logs,
    channel,
    health_status,
    listed_services,
    probe_definition,
    running,
)

SERVICE = pb.DESCRIPTOR.services_by_name["ConversationService"].full_name
CREATE_AGENT = f"/{SERVICE}/CreateAgent"
GET_AGENT = f"/{SERVICE}/GetAgent"


def new_agent(name: str = "Ada", provider: str = "local", model: str = "echo-1") -> pb.CreateAgentRequest:
    return pb.CreateAgentRequest(agent=pb.Agent(name=name, provider=provider, model=model))


def request_id_of(metadata: grpc.aio.Metadata | None) -> str:
    assert metadata is not None
    values = metadata.get_all(REQUEST_ID_HEADER)
    assert len(values) == 1, f"expected one {REQUEST_ID_HEADER} in {metadata!r}"
    value = values[0]
    return value if isinstance(value, str) else value.decode()


async def stored_agents(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM conversation_agents")
    finally:
        await connection.close()
    return count


# --- request id ------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_the_callers_request_id_comes_back_in_trailing_metadata(
    conversation: grpc.aio.Channel,
) -> None:
    stub = pb_grpc.ConversationServiceStub(conversation)
    call = stub.CreateAgent(new_agent(), metadata=((REQUEST_ID_HEADER, "req-from-the-edge"),))
    await call
    assert request_id_of(await call.trailing_metadata()) == "req-from-the-edge"

    # A failed call carries it too: that is when the caller needs it to find the logs.
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetAgent(
            pb.GetAgentRequest(id=str(uuid.uuid4())), metadata=((REQUEST_ID_HEADER, "req-that-fails"),)
        )
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert request_id_of(failed.value.trailing_metadata()) == "req-that-fails"


@pytest.mark.integration
async def test_a_request_id_is_generated_when_the_caller_sends_none(conversation: grpc.aio.Channel) -> None:
    stub = pb_grpc.ConversationServiceStub(conversation)
    generated = []
    for _ in range(2):
        call = stub.CreateAgent(new_agent())
        await call
        generated.append(request_id_of(await call.trailing_metadata()))
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in generated), generated
    assert generated[0] != generated[1]


# --- validation and error mapping ------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (new_agent(name=" Ada"), ["agent.name: does not match regex pattern"]),
        (new_agent(provider="Local AI"), ["agent.provider: does not match regex pattern"]),
        (
            new_agent(name="Ada ", model="-echo"),
            # The model's pattern is a message-level rule (free text for provider a2a), named so.
            ["agent.name: does not match regex pattern", "model: a provider's model name is letters"],
        ),
        (pb.CreateAgentRequest(), ["agent: value is required"]),
    ],
    ids=["name", "provider", "two-fields", "missing-agent"],
)
async def test_a_protovalidate_violation_answers_invalid_argument_naming_the_field(
    conversation: grpc.aio.Channel, database_url: str, request_: pb.CreateAgentRequest, expected: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pb_grpc.ConversationServiceStub(conversation).CreateAgent(request_)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    for fragment in expected:
        assert fragment in details
    # Refused before the handler ran: nothing was stored.
    assert await stored_agents(database_url) == 0


@pytest.mark.integration
async def test_a_domain_error_maps_to_its_status(conversation: grpc.aio.Channel) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await pb_grpc.ConversationServiceStub(conversation).GetAgent(pb.GetAgentRequest(id=missing))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == f"agent {missing} not found"


async def test_an_rpc_not_built_yet_answers_unimplemented() -> None:
    # A service whose RPCs are all left to the generated base, as one not built yet is.
    unbuilt = ServiceDefinition(
        spec=PROBE_SPEC,
        start=unbuilt_service(
            proxy_grpc.add_AgentProxyServiceServicer_to_server, proxy_grpc.AgentProxyServiceServicer
        ),
        authenticator=AdmitAll(),
    )
    async with running(unbuilt, PROBE_ENVIRON) as service, channel(service.port) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await proxy_grpc.AgentProxyServiceStub(ch).ListProviders(proxy_pb.ListProvidersRequest())
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    proxy_service = proxy_pb.DESCRIPTOR.services_by_name["AgentProxyService"].full_name
    assert failed.value.details() == f"/{proxy_service}/ListProviders is not implemented yet"


async def test_an_unexpected_exception_answers_internal_without_its_text() -> None:
    async def explode() -> proxy_pb.ListProvidersResponse:
        raise RuntimeError("secret: password=hunter2")

    with captured_json_logs("macp.rpc") as logs:
        async with running(probe_definition(explode), PROBE_ENVIRON) as service, channel(service.port) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await proxy_grpc.AgentProxyServiceStub(ch).ListProviders(proxy_pb.ListProvidersRequest())

    error = failed.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (error.details() or "")
    assert "hunter2" not in (error.details() or "")
    assert "request id" in (error.details() or "")
    # The text stays in the service's own log, under the request id the caller got back, with the
    # credential in it redacted like any other log line's.
    request_id = request_id_of(error.trailing_metadata())
    [logged] = [entry for entry in logs if entry["level"] == "error"]
    assert logged["request_id"] == request_id
    assert "RuntimeError: secret: password=[redacted]" in logged["exception"]
    assert "hunter2" not in logged["exception"]


@pytest.mark.parametrize(
    ("failure", "store"),
    [
        (RedisConnectionError("Connection closed by server."), "Redis"),
        (asyncpg.CannotConnectNowError("the database system is starting up"), "Postgres"),
        (
            asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
            "Postgres",
        ),
        (ConnectionRefusedError(111, "Connection refused"), "a store"),
    ],
)
async def test_a_store_that_is_away_answers_unavailable_so_callers_retry(
    failure: Exception, store: str
) -> None:
    async def fail() -> proxy_pb.ListProvidersResponse:
        raise failure

    async with running(probe_definition(fail), PROBE_ENVIRON) as service, channel(service.port) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await proxy_grpc.AgentProxyServiceStub(ch).ListProviders(proxy_pb.ListProvidersRequest())
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == f"{store} is unreachable right now; try again"


# --- access log ------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_each_call_writes_one_json_access_log_line(conversation: grpc.aio.Channel) -> None:
    stub = pb_grpc.ConversationServiceStub(conversation)
    with captured_json_logs("macp.rpc") as logs:
        await stub.CreateAgent(new_agent(), metadata=((REQUEST_ID_HEADER, "req-logged-ok"),))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetAgent(
                pb.GetAgentRequest(id=str(uuid.uuid4())), metadata=((REQUEST_ID_HEADER, "req-logged-404"),)
            )

    lines = [entry for entry in logs if entry["message"] == "rpc"]
    assert [(e["rpc"], e["grpc_status"], e["request_id"]) for e in lines] == [
        (CREATE_AGENT, "OK", "req-logged-ok"),
        (GET_AGENT, "NOT_FOUND", "req-logged-404"),
    ]
    for entry in lines:
        assert isinstance(entry["duration_ms"], float | int)
        assert 0 <= entry["duration_ms"] < 10_000
        assert entry["logger"] == "macp.rpc"


# --- authentication hook ---------------------------------------------------------------------------


class BearerTenant:
    """Test authenticator: `authorization: Bearer <tenant>` acts as that tenant; no token is refused."""

    async def authenticate(self, method: str, context: RpcContext) -> Principal:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                tenant = value.removeprefix("Bearer ")
                return Principal(tenant_id=tenant, user_id=f"user-of-{tenant}")
        raise Unauthenticated("no bearer token")


def bearer(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {tenant}"),)


AUTHENTICATED = dataclasses.replace(CONVERSATION, authenticator=BearerTenant())


@pytest.mark.integration
async def test_a_refusing_authenticator_stops_every_rpc_and_reflection_but_health_answers(
    conversation_environ: dict[str, str], database_url: str
) -> None:
    async with running(AUTHENTICATED, conversation_environ) as service, channel(service.port) as ch:
        stub = pb_grpc.ConversationServiceStub(ch)
        calls: list[grpc.aio.UnaryUnaryCall[Any, Any]] = [
            stub.CreateAgent(new_agent()),
            stub.GetAgent(pb.GetAgentRequest(id=str(uuid.uuid4()))),
            stub.ListAgents(pb.ListAgentsRequest()),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details() == "no bearer token"

        # Probes carry no token and must still be answered.
        assert await health_status(ch) == health_pb2.HealthCheckResponse.SERVING
        assert await health_status(ch, SERVICE) == health_pb2.HealthCheckResponse.SERVING
        # Reflection describes the whole port: only to a caller the service accepts.
        with pytest.raises(grpc.aio.AioRpcError) as undescribed:
            await listed_services(ch)
        assert undescribed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert SERVICE in await listed_services(ch, metadata=bearer("acme"))
    assert await stored_agents(database_url) == 0


@pytest.mark.integration
async def test_reflection_can_be_turned_off(conversation_environ: dict[str, str], database_url: str) -> None:
    environ = {**conversation_environ, "MACP_GRPC_REFLECTION": "off"}
    async with running(AUTHENTICATED, environ) as service, channel(service.port) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await listed_services(ch, metadata=bearer("acme"))
        assert absent.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.integration
async def test_handlers_act_as_the_principal_the_authenticator_returns(
    conversation_environ: dict[str, str], database_url: str
) -> None:
    async with running(AUTHENTICATED, conversation_environ) as service, channel(service.port) as ch:
        stub = pb_grpc.ConversationServiceStub(ch)
        created = (await stub.CreateAgent(new_agent(), metadata=bearer("acme"))).agent
        assert (created.tenant_id, created.owner_id) == ("acme", "user-of-acme")

        fetched = await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=bearer("acme"))
        assert fetched.agent == created
        # Another tenant's principal reaches the store too, and sees nothing.
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await stub.GetAgent(pb.GetAgentRequest(id=created.id), metadata=bearer("globex"))
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND

    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT tenant_id, owner_id FROM conversation_agents WHERE id = $1", uuid.UUID(created.id)
        )
    finally:
        await connection.close()
    assert row is not None
    assert (row["tenant_id"], row["owner_id"]) == ("acme", "user-of-acme")
