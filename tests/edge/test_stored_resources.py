"""The standard-method handlers (services/edge/rest/resources.py) take only a resource whose
contract has them: a stray contract fails when the edge's modules load, not on a request."""

from __future__ import annotations

import pytest
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.edge.rest.resources import StoredResource
from services.runtime import resource_cache


def test_agents_and_conversations_have_every_standard_method() -> None:
    assert StoredResource("agents", pb.Agent, resource_cache.AGENT).field_name == "agent"
    assert (
        StoredResource("conversations", pb.Conversation, resource_cache.CONVERSATION).name == "Conversation"
    )


def test_a_message_without_an_etag_is_not_a_stored_resource() -> None:
    with pytest.raises(TypeError, match="Message has no id or no etag"):
        StoredResource("messages", pb.Message, "message")


def test_a_message_without_the_standard_methods_is_refused_naming_the_first_missing() -> None:
    with pytest.raises(TypeError, match="no standard method CreateDeleteAgentRequest"):
        StoredResource("odd", pb.DeleteAgentRequest, "odd")
