"""The standard-method handlers (services/edge/rest/resources.py) take only a resource whose
contract has them: a stray contract fails when the edge's modules load, not on a request."""

from __future__ import annotations

import pytest
from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as tool_pb

from services.edge.context import EdgeContext
from services.edge.rest.agents import AGENTS
from services.edge.rest.conversations import CONVERSATIONS
from services.edge.rest.resources import StoredResource
from services.edge.rest.tool_servers import TOOL_SERVERS
from services.runtime import resource_cache


def _conversation(edge: EdgeContext) -> object:
    return edge.conversation


def test_agents_conversations_and_tool_servers_have_their_standard_methods() -> None:
    assert AGENTS.field_name == "agent"
    assert CONVERSATIONS.cache_kind == resource_cache.CONVERSATION
    assert (TOOL_SERVERS.field_name, TOOL_SERVERS.verbs) == ("tool_server", ("Create", "Get", "Delete"))


def test_a_message_without_an_etag_is_not_a_stored_resource() -> None:
    with pytest.raises(TypeError, match="Message has no id or no etag"):
        StoredResource("messages", pb.Message, pb, "ConversationService", _conversation)


def test_a_message_without_the_standard_methods_is_refused_naming_the_first_missing() -> None:
    with pytest.raises(TypeError, match="no standard method CreateDeleteAgentRequest"):
        StoredResource("odd", pb.DeleteAgentRequest, pb, "ConversationService", _conversation)
    with pytest.raises(TypeError, match="ToolGatewayService has no standard method UpdateToolServer"):
        StoredResource("tool-servers", tool_pb.ToolServer, tool_pb, "ToolGatewayService", _conversation)
