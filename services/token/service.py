"""Wiring of the token service. Its RPCs are not built yet: each answers UNIMPLEMENTED."""

from __future__ import annotations

from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.registry import service
from services.runtime.server import ServiceDefinition, unbuilt_service

DEFINITION = ServiceDefinition(
    spec=service("token"),
    register=unbuilt_service(pb_grpc.add_TokenServiceServicer_to_server, pb_grpc.TokenServiceServicer),
)
