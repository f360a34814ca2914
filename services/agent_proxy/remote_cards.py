"""Outside A2A agents' cards, fetched with the SDK's resolver and kept a bounded time.

A card says where and how to call the agent (its interfaces); it changes rarely, so it is fetched
once per `ttl_seconds` per URL, not on every turn. Only http(s) URLs are fetched (the conversation
service accepts no other; checked again here, since the card URL decides where this proxy
connects). A card that cannot be had is a `CardFailure`, which counts against the agent's breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
from a2a.client import A2ACardResolver, AgentCardResolutionError
from a2a.types.a2a_pb2 import AgentCard

MAX_CARDS = 1000


class CardFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RemoteCards:
    def __init__(
        self, http: httpx.AsyncClient, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._http = http
        self._ttl = ttl_seconds
        self._clock = clock
        self._cards: dict[str, tuple[AgentCard, float]] = {}

    async def card(self, url: str, wait_seconds: float) -> AgentCard:
        held = self._cards.get(url)
        now = self._clock()
        if held is not None and now < held[1]:
            return held[0]
        if urlsplit(url).scheme not in ("http", "https"):
            raise CardFailure(f"the agent card URL {url!r} is not http(s)")
        resolver = A2ACardResolver(self._http, url, agent_card_path="")
        try:
            card = await resolver.get_agent_card(http_kwargs={"timeout": wait_seconds})
        except (AgentCardResolutionError, httpx.HTTPError) as exc:
            raise CardFailure(f"the agent card at {url} could not be had: {exc}") from None
        if len(self._cards) >= MAX_CARDS:
            self._cards = {key: value for key, value in self._cards.items() if value[1] > now}
        self._cards[url] = (card, now + self._ttl)
        return card

    def forget(self, url: str) -> None:
        """Drop a card whose agent failed: the next call fetches it again (it may have moved)."""
        self._cards.pop(url, None)
