"""The OpenAPI schemas mark a tool server's and an outside A2A agent's secrets writeOnly: clients
send them, never get them."""

from __future__ import annotations

from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.edge.schema import SchemaBuilder


def test_a_tool_servers_secrets_are_write_only_and_its_times_read_only() -> None:
    builder = SchemaBuilder()
    builder.ref(pb.ToolServer.DESCRIPTOR)
    schemas = builder.components
    static = schemas["macp.tool_gateway.v1.StaticCredential"]["properties"]
    oauth = schemas["macp.tool_gateway.v1.OAuthClientCredentials"]["properties"]
    assert static["value"]["writeOnly"] is True
    assert oauth["clientSecret"]["writeOnly"] is True
    assert "writeOnly" not in static["header"]
    assert "writeOnly" not in oauth["clientId"]
    server = schemas["macp.tool_gateway.v1.ToolServer"]["properties"]
    assert server["createTime"]["readOnly"] is True


def test_an_outside_a2a_agents_client_secret_is_write_only() -> None:
    builder = SchemaBuilder()
    builder.ref(conversation_pb.Agent.DESCRIPTOR)
    grant = builder.components["macp.conversation.v1.RemoteClientCredentials"]["properties"]
    assert grant["clientSecret"]["writeOnly"] is True
    assert "writeOnly" not in grant["clientId"]
