"""`python -m bench.conversation`: the conversation API through Envoy's front port, beside its raw
baselines in one run against one slice: GET of an agent from the Redis cache and from Postgres
(cache miss), CreateAgent, and a 1,000-message ListMessages page.

Rows of a block, each one hop longer than its raw baseline:

- `GET /v1/agents/{id}`: Redis GET of a cached agent's bytes and the store's Postgres SELECT (the raw
  baselines of a hit and a miss); gRPC GetAgent straight to the conversation service (a hit); then
  client → Envoy front → edge → Envoy mesh → conversation, once answered from the cache (the same
  agents read again and again) and once from Postgres (every call reads an agent never read before,
  so every call misses); and `/healthz` through Envoy's front, the floor of HTTP through Envoy.
- `POST /v1/agents`: the store's INSERT, then CreateAgent through Envoy's front.
- `GET /v1/conversations/{id}/messages?page_size=1000`: the store's SELECT of 1,001 rows, gRPC
  ListMessages to the service, then through Envoy's front (1,000 messages of about 100 characters).

Load is closed-loop on 127.0.0.1, bounded in count and time per row (bench/load.py), the rows of a
block taken in turns (bench.agent_slice.measure_block); the slice's parts each run in their own
process (bench/slice.py) and the client here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import asyncpg
import grpc
import redis.asyncio as aioredis
from google.protobuf import json_format
from macp.conversation.v1 import conversation_service_pb2 as pb

from bench.agent_slice import (
    CPU_COLUMNS,
    INSERT_AGENT,
    NEW_AGENT,
    SELECT_AGENT,
    SERVER_COLUMNS,
    TIMEOUT_SECONDS,
    LoadDefaults,
    Paths,
    Row,
    Settings,
    Target,
    _expect,
    block_table,
    failures,
    measure_block,
    run_slice_bench,
)
from bench.cpu import CpuMeter
from bench.load import Call
from bench.raw_http import RawHttpClient
from bench.slice import RunningSlice, running_slice

MESSAGES = 1000
SELECT_MESSAGES = """
    SELECT * FROM conversation_messages
    WHERE tenant_id = $1 AND conversation_id = $2 AND sequence > $3
    ORDER BY sequence LIMIT $4
"""
FRONT = "HTTP → Envoy front → edge → mesh → conversation"
BLOCKS = (
    ("GET", "`GET /v1/agents/{id}`"),
    ("POST", "`POST /v1/agents`"),
    ("LIST", f"`GET /v1/conversations/{{id}}/messages?page_size={MESSAGES}` ({MESSAGES:,} messages)"),
)


class ConversationPaths:
    """Every row of the benchmark, against one running slice and its seeded data."""

    def __init__(
        self, running: RunningSlice, hot: list[pb.Agent], cold: list[pb.Agent], conversation_id: str
    ) -> None:
        self.slice = running
        self.hot = hot  # read again and again: cache hits after the first read
        self.cold = iter(cold)  # each read once: cache misses
        self.conversation_id = conversation_id
        self.tenant_id = hot[0].tenant_id

    def targets(self) -> list[Target]:
        front = self.slice.front_url
        conversation = self.slice.conversation_address
        return [
            Target("GET", "Redis: GET of the cached agent (raw baseline of a hit)", self._redis_get),
            Target("GET", "Postgres: asyncpg SELECT (raw baseline of a miss)", self._sql_get, chain=False),
            Target("GET", "gRPC GetAgent → conversation (cache hit)", partial(self._grpc_get, conversation)),
            # A hit is answered by the edge from the service's cache (services/edge/rest/cached_reads.py).
            Target(
                "GET",
                "**HTTP → Envoy front → edge → Redis (cache hit)**",
                partial(self._http_get, front, hit=True),
            ),
            Target(
                "GET",
                "**the same, from a lean HTTP/1.1 client (bench/raw_http.py)**",
                partial(self._raw_get, front, path=None),
            ),
            Target("GET", f"{FRONT} (cache miss)", partial(self._http_get, front, hit=False), chain=False),
            Target(
                "GET",
                "HTTP GET /healthz → Envoy front → edge (no RPC: the floor)",
                self._healthz,
                chain=False,
            ),
            Target(
                "GET",
                "the same /healthz, from the lean client",
                partial(self._raw_get, front, path="/healthz"),
                chain=False,
            ),
            Target("POST", "Postgres: asyncpg INSERT … RETURNING (raw baseline)", self._sql_post),
            Target("POST", f"**{FRONT}**", self._http_post),
            Target(
                "LIST", f"Postgres: asyncpg SELECT of {MESSAGES + 1:,} rows (raw baseline)", self._sql_list
            ),
            Target("LIST", "gRPC ListMessages → conversation", self._grpc_list),
            Target("LIST", f"**{FRONT}**", self._http_list),
        ]

    def _hot_id(self, index: int) -> str:
        return self.hot[index % len(self.hot)].id

    def _cold_id(self) -> str:
        try:
            return next(self.cold).id
        except StopIteration:
            raise LookupError("out of never-read agents: raise --requests' seed budget") from None

    async def _pool(self, stack: AsyncExitStack, concurrency: int) -> Any:
        pool = asyncpg.create_pool(self.slice.database_url, min_size=concurrency, max_size=concurrency)
        return await stack.enter_async_context(pool)

    async def _http(self, stack: AsyncExitStack, concurrency: int) -> Any:
        return await Paths._client(stack, concurrency, self.slice.front_url, self.slice.edge_headers)

    # --- GET ---------------------------------------------------------------------------------

    async def _redis_get(self, stack: AsyncExitStack, concurrency: int) -> Call:
        redis: aioredis.Redis = aioredis.from_url(self.slice.redis_url, max_connections=concurrency)
        stack.push_async_callback(redis.aclose)
        key = f"bench:conversation:{uuid.uuid4().hex}"
        await redis.set(key, self.hot[0].SerializeToString(), ex=600)

        async def call(index: int) -> None:
            if await redis.get(key) is None:
                raise LookupError(key)

        return call

    async def _sql_get(self, stack: AsyncExitStack, concurrency: int) -> Call:
        pool = await self._pool(stack, concurrency)

        async def call(index: int) -> None:
            agent_id = uuid.UUID(self._hot_id(index))
            if await pool.fetchrow(SELECT_AGENT, self.tenant_id, agent_id, timeout=TIMEOUT_SECONDS) is None:
                raise LookupError(f"no row for agent {agent_id}")

        return call

    async def _grpc_get(self, address: str, stack: AsyncExitStack, concurrency: int) -> Call:
        stub = await Paths.stub(stack, address)
        metadata = self.slice.conversation_metadata

        async def call(index: int) -> None:
            request = pb.GetAgentRequest(id=self._hot_id(index))
            await stub.GetAgent(request, timeout=TIMEOUT_SECONDS, metadata=metadata)

        return call

    async def _http_get(self, base_url: str, stack: AsyncExitStack, concurrency: int, *, hit: bool) -> Call:
        client = await self._http(stack, concurrency)

        async def call(index: int) -> None:
            agent_id = self._hot_id(index) if hit else self._cold_id()
            _expect(await client.get(f"/v1/agents/{agent_id}"), 200)

        return call

    async def _raw_get(
        self, base_url: str, stack: AsyncExitStack, concurrency: int, *, path: str | None
    ) -> Call:
        """A cached agent (or `path`) from the lean client: the server's path without httpx's CPU."""
        client = await RawHttpClient(base_url, self.slice.edge_headers).open(concurrency, stack)

        async def call(index: int) -> None:
            target = path or f"/v1/agents/{self._hot_id(index)}"
            response = await client.get(target)
            if response.status != 200:
                raise RuntimeError(f"GET {target}: {response.status} {response.body[:200]!r}")

        return call

    async def _healthz(self, stack: AsyncExitStack, concurrency: int) -> Call:
        client = await self._http(stack, concurrency)

        async def call(index: int) -> None:
            _expect(await client.get("/healthz"), 200)

        return call

    # --- POST --------------------------------------------------------------------------------

    async def _sql_post(self, stack: AsyncExitStack, concurrency: int) -> Call:
        pool = await self._pool(stack, concurrency)
        generation = json.dumps(NEW_AGENT["generation"])
        owner = self.hot[0].owner_id

        async def call(index: int) -> None:
            await pool.fetchrow(
                INSERT_AGENT,
                uuid.uuid4(),
                self.tenant_id,
                owner,
                NEW_AGENT["name"],
                NEW_AGENT["provider"],
                NEW_AGENT["model"],
                NEW_AGENT["systemPrompt"],
                generation,
                NEW_AGENT["capabilities"],
                "{}",
                uuid.uuid4().hex,
                timeout=TIMEOUT_SECONDS,
            )

        return call

    async def _http_post(self, stack: AsyncExitStack, concurrency: int) -> Call:
        client = await self._http(stack, concurrency)

        async def call(index: int) -> None:
            _expect(await client.post("/v1/agents", json=NEW_AGENT), 201)

        return call

    # --- ListMessages ------------------------------------------------------------------------

    async def _sql_list(self, stack: AsyncExitStack, concurrency: int) -> Call:
        pool = await self._pool(stack, concurrency)
        conversation_id = uuid.UUID(self.conversation_id)

        async def call(index: int) -> None:
            rows = await pool.fetch(
                SELECT_MESSAGES, self.tenant_id, conversation_id, 0, MESSAGES + 1, timeout=TIMEOUT_SECONDS
            )
            if len(rows) != MESSAGES:
                raise LookupError(f"{len(rows)} messages, not {MESSAGES}")

        return call

    async def _grpc_list(self, stack: AsyncExitStack, concurrency: int) -> Call:
        stub = await Paths.stub(stack, self.slice.conversation_address)
        metadata = self.slice.conversation_metadata
        request = pb.ListMessagesRequest(conversation_id=self.conversation_id, page_size=MESSAGES)

        async def call(index: int) -> None:
            reply = await stub.ListMessages(request, timeout=TIMEOUT_SECONDS, metadata=metadata)
            if len(reply.messages) != MESSAGES:
                raise LookupError(f"{len(reply.messages)} messages, not {MESSAGES}")

        return call

    async def _http_list(self, stack: AsyncExitStack, concurrency: int) -> Call:
        client = await self._http(stack, concurrency)
        path = f"/v1/conversations/{self.conversation_id}/messages"

        async def call(index: int) -> None:
            response = await client.get(path, params={"page_size": MESSAGES})
            _expect(response, 200)
            if len(response.json()["messages"]) != MESSAGES:
                raise LookupError("short page")

        return call


async def seed(running: RunningSlice, hot: int, cold: int) -> ConversationPaths:
    """Agents (created through the service, so the rows are exactly its rows), a conversation and
    its messages; the agents to miss on are never read before their row."""
    async with AsyncExitStack() as stack:
        stub = await Paths.stub(stack, running.conversation_address)
        metadata = running.conversation_metadata
        draft = json_format.ParseDict(NEW_AGENT, pb.Agent())
        gate = asyncio.Semaphore(16)

        async def create() -> pb.Agent:
            async with gate:
                reply = await stub.CreateAgent(
                    pb.CreateAgentRequest(agent=draft), timeout=TIMEOUT_SECONDS, metadata=metadata
                )
            return reply.agent

        # The service fetches the token service's keys over the mesh once it is up: until it holds
        # them it answers UNAVAILABLE, so the first create waits for that (20 s at most).
        for attempt in range(100):
            try:
                first = await create()
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 99:
                    raise
                await asyncio.sleep(0.2)
        agents = [first, *await asyncio.gather(*(create() for _ in range(hot + cold - 1)))]
        created = await stub.CreateConversation(
            pb.CreateConversationRequest(
                conversation=pb.Conversation(
                    participant_agent_ids=[agents[0].id], turn_policy=pb.TURN_POLICY_ROUND_ROBIN
                )
            ),
            timeout=TIMEOUT_SECONDS,
            metadata=metadata,
        )
        conversation_id = created.conversation.id
        author = agents[0].owner_id
        numbers = itertools.count()

        async def append() -> None:
            async with gate:
                text = f"message {next(numbers)}: " + "lorem ipsum dolor sit amet " * 3
                message = pb.Message(
                    id=str(uuid.uuid4()),
                    conversation_id=conversation_id,
                    role=pb.MESSAGE_ROLE_USER,
                    author_id=author,
                    text=text,
                )
                await stub.AppendMessage(
                    pb.AppendMessageRequest(message=message), timeout=TIMEOUT_SECONDS, metadata=metadata
                )

        await asyncio.gather(*(append() for _ in range(MESSAGES)))
    return ConversationPaths(running, list(agents[:hot]), list(agents[hot:]), conversation_id)


async def measure(running: RunningSlice, settings: Settings, say: Callable[[str], None]) -> list[Row]:
    # Every call of the miss row, warm-ups included, reads an agent no call read before.
    rounds_warmup = settings.warmup + 2 * max(settings.concurrency) * settings.rounds
    cold = len(settings.concurrency) * (settings.requests + rounds_warmup)
    paths = await seed(running, settings.agents, cold)
    say(f"seeded {settings.agents + cold:,} agents and {MESSAGES:,} messages")
    meter = CpuMeter(running.pids)
    rows: list[Row] = []
    for method, _ in BLOCKS:
        targets = [target for target in paths.targets() if target.method == method]
        for concurrency in settings.concurrency:
            results = await measure_block(targets, concurrency, settings, meter)
            for target, result in zip(targets, results, strict=True):
                rows.append(Row(target, concurrency, result))
                say(f"{method} c={concurrency} {target.label}: {result.count} ok, p50 {result.p50_ms:.2f} ms")
    return rows


def report(rows: Sequence[Row], settings: Settings) -> str:
    parts = [
        f"Conversation API: closed loop, at most {settings.requests:,} requests or "
        f"{settings.max_seconds:g} s per row, taken in {settings.rounds} turns with the other rows "
        f"of its block, after {settings.warmup} warm-up requests; {settings.agents} agents for the hits.",
    ]
    for method, title in BLOCKS:
        block = [row for row in rows if row.target.method == method]
        parts += ["", title, "", block_table(block, settings.concurrency, SERVER_COLUMNS, CPU_COLUMNS)]
    parts += failures(rows)
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    return run_slice_bench(
        "conversation",
        (__doc__ or "").splitlines()[0],
        LoadDefaults(1000, 5.0, 50, 3, (1, 16), 100, "agents read again and again"),
        lambda say: running_slice(progress=say),
        measure,
        report,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
