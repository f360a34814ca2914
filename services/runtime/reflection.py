"""gRPC server reflection as every service serves it: the whole mesh's contract, on both versions.

Why not the stock registration alone (grpc_reflection's `enable_server_reflection`):
- Envoy's mesh listener routes a reflection stream to one service (the `macp-target` header's, or
  its default: services/stack/envoy_mesh_routes.py), so a tool asking the mesh what it serves
  must hear of all of it from whichever service answers. Every service therefore lists every
  MACP gRPC service of the registry and holds their descriptors (their modules are imported here).
- The stock servicer looks symbols up with the descriptor pool's FindFileContainingSymbol, which
  (upb) knows services, messages and enums but not their members: describing a method
  (`macp.token.v1.TokenService.GetJwks`, what grpcurl sends) or a field was NOT_FOUND. A member is
  found here through its owner.
- grpcio-reflection serves only `grpc.reflection.v1alpha`; current grpcurl asks
  `grpc.reflection.v1` first. The two protocols are the same messages under another package, so
  the v1 service is the same servicer under the v1 name, and its file is v1alpha's renamed.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import _async, reflection, reflection_pb2

from services.runtime.registry import SERVICES

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
REFLECTION_METHOD = "ServerReflectionInfo"
MESH_SERVICES: tuple[str, ...] = tuple(name for spec in SERVICES for name in spec.grpc_services)


def contract_module(grpc_service: str) -> str:
    """The generated module of a MACP gRPC service (`macp.token.v1.TokenService` ->
    `macp.token.v1.token_service_pb2`): buf generates one file per service, named after it."""
    package, _, service_name = grpc_service.rpartition(".")
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", service_name).lower()
    return f"{package}.{snake}_pb2"


def import_mesh_contracts() -> None:
    """Load every MACP service's descriptors (and, through their imports, buf/validate's, the
    well-known types' and macp.common's) into the default pool reflection answers from."""
    for grpc_service in MESH_SERVICES:
        importlib.import_module(contract_module(grpc_service))


def _add_v1_file(pool: Any) -> None:
    """Put `grpc/reflection/v1/reflection.proto` in the pool: v1alpha's file under the v1 package,
    so a caller describing the v1 service finds it."""
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old, new = f".{file.package}.", f".{V1_PACKAGE}."
    file.name, file.package = V1_FILE, V1_PACKAGE
    file.options.ClearField("deprecated")
    for message in file.message_type:
        for message_field in message.field:
            if message_field.HasField("type_name"):  # assigning even "" would mark a scalar typed
                message_field.type_name = message_field.type_name.replace(old, new)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(file.SerializeToString())


def _member_file(pool: Any, symbol: str) -> FileDescriptor | None:
    """The file of a service's method or a message's field, nested type or enum, by its owner."""
    owner, _, member = symbol.rpartition(".")
    try:
        service = pool.FindServiceByName(owner)
    except KeyError:
        pass
    else:
        return service.file if member in service.methods_by_name else None
    try:
        message = pool.FindMessageTypeByName(owner)
    except KeyError:
        return None
    members = (message.fields_by_name, message.nested_types_by_name, message.enum_types_by_name)
    return message.file if any(member in names for names in members) else None


def _with_dependencies(file: FileDescriptor) -> list[bytes]:
    """`file` and every file it imports, transitively, serialized: what a client needs to build it."""
    found: dict[str, FileDescriptor] = {}
    pending = [file]
    while pending:
        current = pending.pop()
        if current.name not in found:
            found[current.name] = current
            pending.extend(current.dependencies)
    serialized = []
    for each in found.values():
        proto = descriptor_pb2.FileDescriptorProto()
        each.CopyToProto(proto)
        serialized.append(proto.SerializeToString())
    return serialized


class MeshReflection(_async.ReflectionServicer):
    """The stock asyncio servicer, finding members (methods, fields) as well."""

    def __init__(self, service_names: Iterable[str], pool: Any) -> None:
        super().__init__(service_names, pool=pool)
        self._descriptors = pool

    def _file_containing_symbol(
        self, request: reflection_pb2.ServerReflectionRequest, fully_qualified_name: str
    ) -> reflection_pb2.ServerReflectionResponse:
        try:
            found: FileDescriptor | None = self._descriptors.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            found = _member_file(self._descriptors, fully_qualified_name)
        if found is None:
            return reflection_pb2.ServerReflectionResponse(
                error_response=reflection_pb2.ErrorResponse(
                    error_code=grpc.StatusCode.NOT_FOUND.value[0],
                    error_message=f"no symbol {fully_qualified_name}",
                ),
                original_request=request,
            )
        return reflection_pb2.ServerReflectionResponse(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=_with_dependencies(found)
            ),
            original_request=request,
        )


def enable_mesh_reflection(server: grpc.aio.Server, also_serving: Iterable[str]) -> None:
    """Serve reflection (v1alpha and v1) on `server`, listing every MACP gRPC service of the mesh,
    `also_serving` (the port's own extras: health) and reflection itself."""
    import_mesh_contracts()
    pool = descriptor_pool.Default()
    _add_v1_file(pool)
    names = dict.fromkeys((*MESH_SERVICES, *also_serving, V1ALPHA_SERVICE, V1_SERVICE))
    servicer = MeshReflection(tuple(names), pool=pool)

    # The stubs type the servicer's method as a coroutine; it is an async generator.
    answer: Any = servicer.ServerReflectionInfo

    async def reflect(
        requests: AsyncIterator[reflection_pb2.ServerReflectionRequest], context: object
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for response in answer(requests, context):
            yield response

    # Both versions' messages are the same on the wire, so v1alpha's classes read and write v1's.
    handler = grpc.stream_stream_rpc_method_handler(
        reflect,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {REFLECTION_METHOD: handler})
            for name in (V1ALPHA_SERVICE, V1_SERVICE)
        )
    )
