"""The official `a2a-sdk` client as an outside caller uses it: the agent's card fetched from the
edge with a bearer token, then a client made from that card (its JSON-RPC interface)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.types import a2a_pb2 as a2a


@asynccontextmanager
async def a2a_client(
    front_url: str, agent_id: str, token: str
) -> AsyncIterator[tuple[a2a.AgentCard, Client]]:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        card = await A2ACardResolver(http, base_url=f"{front_url}/a2a/agents/{agent_id}").get_agent_card()
        client = ClientFactory(ClientConfig(httpx_client=http, streaming=True)).create(card)
        yield card, client


def user_message(text: str, message_id: str, context_id: str = "") -> a2a.SendMessageRequest:
    return a2a.SendMessageRequest(
        message=a2a.Message(
            message_id=message_id, context_id=context_id, role=a2a.ROLE_USER, parts=[a2a.Part(text=text)]
        )
    )
