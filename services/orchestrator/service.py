"""Wiring of the orchestrator service. Its RPCs are not built yet: each answers UNIMPLEMENTED."""

from __future__ import annotations

from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

from services.runtime.registry import service
from services.runtime.server import ServiceDefinition, unbuilt_service

DEFINITION = ServiceDefinition(
    spec=service("orchestrator"),
    register=unbuilt_service(
        pb_grpc.add_OrchestratorServiceServicer_to_server, pb_grpc.OrchestratorServiceServicer
    ),
)
