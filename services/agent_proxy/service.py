"""Wiring of the agent-proxy service. Its RPCs are not built yet: each answers UNIMPLEMENTED.

Scopes: none yet (`method_scopes` is empty): every call needs a valid token for this service's
audience, `urn:macp:service:<name>`; per-method scopes come with the RPCs themselves.
"""

from __future__ import annotations

from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as pb_grpc

from services.runtime.registry import service
from services.runtime.server import ServiceDefinition, unbuilt_service

DEFINITION = ServiceDefinition(
    spec=service("agent-proxy"),
    register=unbuilt_service(
        pb_grpc.add_AgentProxyServiceServicer_to_server, pb_grpc.AgentProxyServiceServicer
    ),
)
