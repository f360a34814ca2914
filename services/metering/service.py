"""Wiring of the metering service. Its RPCs are not built yet: each answers UNIMPLEMENTED."""

from __future__ import annotations

from macp.metering.v1 import metering_service_pb2_grpc as pb_grpc

from services.runtime.registry import service
from services.runtime.server import ServiceDefinition, unbuilt_service

DEFINITION = ServiceDefinition(
    spec=service("metering"),
    register=unbuilt_service(pb_grpc.add_MeteringServiceServicer_to_server, pb_grpc.MeteringServiceServicer),
)
