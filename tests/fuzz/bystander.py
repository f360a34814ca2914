"""The other tenant's ordinary traffic during the attack: creating, reading, changing and deleting
its agents, starting conversations and posting messages, listing, reading its usage, and probing
the attacker's ids (which must stay NOT_FOUND to it). Every call is recorded with the status it
must answer; so is every item of another tenant a list shows it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field

import httpx

from tests.fuzz.targets import Attacker, Resources
from tests.world import World

# Pause between two rounds of ordinary calls: a steady user, not a load test.
PAUSE_SECONDS = 0.05
# Every this many rounds, a new conversation and a message in it (each message runs an agent turn),
# at most so many: the tenant's plan counts orchestrations (50 a month on the free plan), and the
# round run after the attack needs one left.
MESSAGE_EVERY = 4
MAX_MESSAGES = 20


@dataclass(frozen=True)
class Call:
    label: str
    status: int | None
    expected: int
    detail: str

    @property
    def failed(self) -> bool:
        return self.status != self.expected


@dataclass
class Bystander:
    world: World
    own: Resources
    attacker: Attacker
    calls: list[Call] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def failures(self) -> list[Call]:
        return [call for call in self.calls if call.failed]

    async def run(self) -> None:
        async with self.own.client(self.world.front_url) as client:
            rounds = 0
            while not self._stopping.is_set():
                await self._round(client, rounds)
                rounds += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), PAUSE_SECONDS)

    async def _call(
        self, client: httpx.AsyncClient, label: str, expected: int, method: str, url: str, **kwargs: object
    ) -> httpx.Response | None:
        try:
            response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.calls.append(Call(label, None, expected, f"{type(exc).__name__}: {exc}"))
            return None
        self.calls.append(Call(label, response.status_code, expected, response.text[:300]))
        return response if response.status_code == expected else None

    async def _round(self, client: httpx.AsyncClient, rounds: int) -> None:
        draft = {"name": f"bystander {rounds}", "provider": "local", "model": "echo-1"}
        created = await self._call(client, "POST /v1/agents", 201, "POST", "/v1/agents", json=draft)
        if created is not None:
            agent = f"/v1/agents/{created.json()['id']}"
            read = await self._call(client, "GET /v1/agents/{id}", 200, "GET", agent)
            if read is not None:
                changed = await self._call(
                    client,
                    "PATCH /v1/agents/{id}",
                    200,
                    "PATCH",
                    agent,
                    json={"systemPrompt": "still here"},
                    headers={"if-match": read.headers["etag"]},
                )
                if changed is not None:
                    await self._call(
                        client,
                        "DELETE /v1/agents/{id}",
                        204,
                        "DELETE",
                        agent,
                        headers={"if-match": changed.headers["etag"]},
                    )
        for path in ("/v1/agents?page_size=100", "/v1/conversations?page_size=100"):
            listed = await self._call(client, f"GET {path}", 200, "GET", path)
            if listed is not None:
                self._check_own(path, listed.json())
        await self._call(client, "GET /v1/usage", 200, "GET", "/v1/usage")
        attacker = self.attacker.resources
        for path in (f"/v1/agents/{attacker.agent}", f"/v1/conversations/{attacker.conversation}"):
            await self._call(client, "GET the attacker's resource", 404, "GET", path)
        if rounds % MESSAGE_EVERY == 0 and rounds // MESSAGE_EVERY < MAX_MESSAGES:
            await self._converse(client)

    async def _converse(self, client: httpx.AsyncClient) -> None:
        draft = {
            "title": "ordinary",
            "participantAgentIds": [self.own.agent],
            "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
        }
        created = await self._call(
            client, "POST /v1/conversations", 201, "POST", "/v1/conversations", json=draft
        )
        if created is not None:
            messages = f"/v1/conversations/{created.json()['id']}/messages"
            message = {"id": str(uuid.uuid4()), "text": "an ordinary question"}
            await self._call(
                client, "POST /v1/conversations/{id}/messages", 201, "POST", messages, json=message
            )
            listed = await self._call(client, "GET /v1/conversations/{id}/messages", 200, "GET", messages)
            if listed is not None:
                self._check_own(messages, listed.json())

    def _check_own(self, path: str, page: dict[str, object]) -> None:
        """Every item of a list page belongs to the bystander's tenant and none is the attacker's."""
        tenant = self.own.tenant.tenant_id
        attacker = self.attacker.resources
        foreign = {attacker.agent, attacker.conversation, attacker.tenant.tenant_id}
        for key in ("agents", "conversations", "messages"):
            items = page.get(key, [])
            assert isinstance(items, list)
            for item in items:
                owner = item.get("tenantId", tenant)
                text = str(item)
                if owner != tenant or any(value in text for value in foreign) or "fuzz" in text:
                    self.leaks.append(f"{path}: {text[:300]}")
