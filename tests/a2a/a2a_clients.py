"""The official `a2a-sdk` client as an outside caller uses it: the agent's card fetched from the
edge with a bearer token, then a client made from that card (its JSON-RPC interface)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.types import a2a_pb2 as a2a
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from services.runtime.a2a_usage import USAGE_EXTENSION_URI


@asynccontextmanager
async def a2a_client(
    front_url: str, agent_id: str, token: str, *, streaming: bool = True
) -> AsyncIterator[tuple[a2a.AgentCard, Client]]:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        card = await A2ACardResolver(http, base_url=f"{front_url}/a2a/agents/{agent_id}").get_agent_card()
        client = ClientFactory(ClientConfig(httpx_client=http, streaming=streaming)).create(card)
        yield card, client


def user_message(text: str, message_id: str, context_id: str = "") -> a2a.SendMessageRequest:
    return a2a.SendMessageRequest(
        message=a2a.Message(
            message_id=message_id, context_id=context_id, role=a2a.ROLE_USER, parts=[a2a.Part(text=text)]
        )
    )


def streamed_text(events: list[a2a.StreamResponse]) -> dict[str, str]:
    """Each artifact's text as its updates build it (by artifact id, i.e. turn id)."""
    texts: dict[str, str] = {}
    for event in events:
        if event.HasField("artifact_update"):
            update = event.artifact_update
            chunk = "".join(part.text for part in update.artifact.parts)
            previous = texts.get(update.artifact.artifact_id, "") if update.append else ""
            texts[update.artifact.artifact_id] = previous + chunk
    return texts


def usage_of(metadata: Struct) -> dict[str, Any]:
    """The usage extension's document in a task's (or a status update's) metadata."""
    document: dict[str, Any] = MessageToDict(metadata)[USAGE_EXTENSION_URI]
    return document
