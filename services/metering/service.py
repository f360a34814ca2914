"""Wiring of the metering service. Its RPCs are not built yet: each answers UNIMPLEMENTED.

Scopes: none yet (`method_scopes` is empty): every call needs a valid token for this service's
audience, `urn:macp:service:<name>`; per-method scopes come with the RPCs themselves.
"""

from __future__ import annotations

from macp.metering.v1 import metering_service_pb2_grpc as pb_grpc

from services.runtime.registry import service
from services.runtime.server import ServiceDefinition, unbuilt_service

DEFINITION = ServiceDefinition(
    spec=service("metering"),
    register=unbuilt_service(pb_grpc.add_MeteringServiceServicer_to_server, pb_grpc.MeteringServiceServicer),
)
