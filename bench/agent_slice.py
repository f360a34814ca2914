"""`python -m bench.agent_slice`: latency and throughput of `GET /v1/agents/{id}` and `POST /v1/agents`
through Envoy's front port, beside the raw baselines, in one run against one slice.

The paths, each one hop longer than the one above it, so that the difference between two rows is
the cost of one hop:

1. Postgres: the conversation store's own SELECT (or INSERT) with asyncpg, the raw baseline;
2. gRPC to the conversation service's own port (no Envoy, no edge);
3. gRPC through Envoy's mesh listener;
4. HTTP to the edge without Envoy in front (the edge calls through the mesh, as always);
5. HTTP to Envoy's front listener: client → Envoy → edge → Envoy mesh → conversation → Postgres;

and, for GET, the edge's `/healthz` (no RPC behind it): the floor of the HTTP client and server.

Load is closed-loop, on 127.0.0.1 only, bounded in count and in time per row (bench/load.py); the
rows of a block are taken in turns, so that they share the swings of a shared machine. The client
(httpx, grpc.aio, asyncpg) runs in this process and the slice's parts each in their own
(bench/slice.py). The CPU each process spent per request ("server CPU" sums the slice's) says where
the time goes on a machine with few cores, and unlike latency it hardly depends on the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractContextManager, AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
import grpc
import httpx
from google.protobuf import json_format
from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc

from bench.cpu import CLIENT, CpuMeter
from bench.load import Call, LoadResult, drive
from bench.slice import RunningSlice, running_slice
from bench.stats import machine_line, markdown_table, ratio
from services.runtime.principal import LOCAL_DEVELOPMENT_PRINCIPAL
from services.stack.process import StartupError

TIMEOUT_SECONDS = 10.0
# The body of the end-to-end test (tests/e2e/test_agent_slice.py).
NEW_AGENT: dict[str, Any] = {
    "name": "Ada",
    "provider": "local",
    "model": "echo-1",
    "systemPrompt": "You check proofs.",
    "capabilities": ["math", "proofs"],
    "generation": {"maxTokens": 256, "temperature": 0.2},
}
# The statements of services/conversation/agent_store.py, run by hand.
SELECT_AGENT = "SELECT * FROM conversation_agents WHERE tenant_id = $1 AND id = $2 AND delete_time IS NULL"
INSERT_AGENT = """
    INSERT INTO conversation_agents
        (id, tenant_id, owner_id, name, provider, model, system_prompt,
         generation, capabilities, bidding, etag)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10::jsonb, $11)
    RETURNING *
"""
EDGE_ONWARDS = "edge → mesh → conversation"
SERVER_COLUMNS = ("conversation", "token", "edge", "envoy", "postgres")  # "server CPU" is their sum
CPU_COLUMNS = (CLIENT, *SERVER_COLUMNS)


@dataclass(frozen=True)
class Target:
    """What one call of a row does: `open` builds it (clients, pools) for a concurrency."""

    method: str
    label: str
    open: Callable[[AsyncExitStack, int], Awaitable[Call]]
    chain: bool = True  # one hop more than the row above it (the /healthz floor is not)


class Paths:
    """Every path of the benchmark, against one running slice and one set of seeded agents."""

    def __init__(self, running: RunningSlice, agent_ids: Sequence[uuid.UUID]) -> None:
        self.slice = running
        self.ids = list(agent_ids)
        self.draft = json_format.ParseDict(NEW_AGENT, pb.Agent())

    def targets(self) -> list[Target]:
        conversation, mesh = self.slice.conversation_address, self.slice.mesh_address
        edge, front = self.slice.edge_url, self.slice.front_url
        return [
            Target("GET", "Postgres: asyncpg SELECT (raw baseline)", self._sql_get),
            Target("GET", "gRPC GetAgent → conversation", partial(self._grpc_get, conversation)),
            Target("GET", "gRPC GetAgent → Envoy mesh → conversation", partial(self._grpc_get, mesh)),
            Target("GET", "HTTP → edge → mesh → conversation", partial(self._http_get, edge)),
            Target("GET", f"**HTTP → Envoy front → {EDGE_ONWARDS}**", partial(self._http_get, front)),
            Target("GET", "HTTP GET /healthz → edge (no RPC: the HTTP floor)", self._healthz, chain=False),
            Target("POST", "Postgres: asyncpg INSERT … RETURNING (raw baseline)", self._sql_post),
            Target("POST", "gRPC CreateAgent → conversation", partial(self._grpc_post, conversation)),
            Target("POST", "gRPC CreateAgent → Envoy mesh → conversation", partial(self._grpc_post, mesh)),
            Target("POST", "HTTP → edge → mesh → conversation", partial(self._http_post, edge)),
            Target("POST", f"**HTTP → Envoy front → {EDGE_ONWARDS}**", partial(self._http_post, front)),
        ]

    def agent_id(self, index: int) -> uuid.UUID:
        return self.ids[index % len(self.ids)]

    # --- clients, each closed by the row's exit stack --------------------------------------

    async def _pool(self, stack: AsyncExitStack, concurrency: int) -> Any:
        pool = asyncpg.create_pool(self.slice.database_url, min_size=concurrency, max_size=concurrency)
        return await stack.enter_async_context(pool)

    @staticmethod
    async def stub(stack: AsyncExitStack, address: str) -> pb_grpc.ConversationServiceStub:
        channel = grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
        await stack.enter_async_context(channel)
        return pb_grpc.ConversationServiceStub(channel)

    @staticmethod
    async def _client(
        stack: AsyncExitStack, concurrency: int, base_url: str, headers: dict[str, str] | None = None
    ) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = httpx.AsyncClient(
            base_url=base_url, timeout=TIMEOUT_SECONDS, limits=limits, trust_env=False, headers=headers
        )
        return await stack.enter_async_context(client)

    # --- GET ---------------------------------------------------------------------------------

    async def _sql_get(self, stack: AsyncExitStack, concurrency: int) -> Call:
        pool = await self._pool(stack, concurrency)
        tenant = LOCAL_DEVELOPMENT_PRINCIPAL.tenant_id

        async def call(index: int) -> None:
            if (
                await pool.fetchrow(SELECT_AGENT, tenant, self.agent_id(index), timeout=TIMEOUT_SECONDS)
                is None
            ):
                raise LookupError(f"no row for agent {self.agent_id(index)}")

        return call

    async def _grpc_get(self, address: str, stack: AsyncExitStack, concurrency: int) -> Call:
        stub = await self.stub(stack, address)

        async def call(index: int) -> None:
            await stub.GetAgent(
                pb.GetAgentRequest(id=str(self.agent_id(index))),
                timeout=TIMEOUT_SECONDS,
                metadata=self.slice.conversation_metadata,
            )

        return call

    async def _http_get(self, base_url: str, stack: AsyncExitStack, concurrency: int) -> Call:
        client = await self._client(stack, concurrency, base_url, self.slice.edge_headers)

        async def call(index: int) -> None:
            _expect(await client.get(f"/v1/agents/{self.agent_id(index)}"), 200)

        return call

    async def _healthz(self, stack: AsyncExitStack, concurrency: int) -> Call:
        client = await self._client(stack, concurrency, self.slice.edge_url)

        async def call(index: int) -> None:
            _expect(await client.get("/healthz"), 200)

        return call

    # --- POST --------------------------------------------------------------------------------

    async def _sql_post(self, stack: AsyncExitStack, concurrency: int) -> Call:
        pool = await self._pool(stack, concurrency)
        principal = LOCAL_DEVELOPMENT_PRINCIPAL
        generation = json.dumps(NEW_AGENT["generation"])

        async def call(index: int) -> None:
            await pool.fetchrow(
                INSERT_AGENT,
                uuid.uuid4(),
                principal.tenant_id,
                principal.user_id,
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

    async def _grpc_post(self, address: str, stack: AsyncExitStack, concurrency: int) -> Call:
        stub = await self.stub(stack, address)

        async def call(index: int) -> None:
            await stub.CreateAgent(
                pb.CreateAgentRequest(agent=self.draft),
                timeout=TIMEOUT_SECONDS,
                metadata=self.slice.conversation_metadata,
            )

        return call

    async def _http_post(self, base_url: str, stack: AsyncExitStack, concurrency: int) -> Call:
        client = await self._client(stack, concurrency, base_url, self.slice.edge_headers)

        async def call(index: int) -> None:
            _expect(await client.post("/v1/agents", json=NEW_AGENT), 201)

        return call


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.url.path}: {response.status_code} {response.text[:200]}"
        )


async def seed_agents(running: RunningSlice, count: int) -> list[uuid.UUID]:
    """Agents for the GET rows, created through the service (so the rows are exactly its rows)."""
    async with AsyncExitStack() as stack:
        stub = await Paths.stub(stack, running.conversation_address)
        draft = json_format.ParseDict(NEW_AGENT, pb.Agent())
        replies = [
            await stub.CreateAgent(
                pb.CreateAgentRequest(agent=draft),
                timeout=TIMEOUT_SECONDS,
                metadata=running.conversation_metadata,
            )
            for _ in range(count)
        ]
    return [uuid.UUID(reply.agent.id) for reply in replies]


@dataclass(frozen=True)
class Row:
    target: Target
    concurrency: int
    result: LoadResult


@dataclass(frozen=True)
class Settings:
    requests: int
    max_seconds: float
    warmup: int
    rounds: int
    concurrency: tuple[int, ...]
    agents: int


async def measure_block(
    targets: Sequence[Target], concurrency: int, settings: Settings, meter: CpuMeter
) -> list[LoadResult]:
    """The rows of one table block, taken in turns (A B C, A B C, ...) so that each path sees the
    same swings of a shared machine; each row's budget of requests and seconds is split over the turns."""
    seconds = settings.max_seconds / settings.rounds
    async with AsyncExitStack() as stack:
        calls = [await target.open(stack, concurrency) for target in targets]
        turns: list[list[LoadResult]] = [[] for _ in calls]
        for turn in range(settings.rounds):
            # Later turns warm up briefly again: the server may have closed idle keep-alive connections.
            warmup = settings.warmup if turn == 0 else 2 * concurrency
            requests = settings.requests // settings.rounds + int(turn < settings.requests % settings.rounds)
            for call, results in zip(calls, turns, strict=True):
                results.append(
                    await drive(
                        call,
                        concurrency=concurrency,
                        requests=requests,
                        max_seconds=seconds,
                        warmup=warmup,
                        meter=meter,
                    )
                )
    return [LoadResult.merge(results) for results in turns]


async def measure(running: RunningSlice, settings: Settings, say: Callable[[str], None]) -> list[Row]:
    paths = Paths(running, await seed_agents(running, settings.agents))
    meter = CpuMeter(running.pids)
    rows: list[Row] = []
    for method in ("GET", "POST"):
        targets = [target for target in paths.targets() if target.method == method]
        for concurrency in settings.concurrency:
            results = await measure_block(targets, concurrency, settings, meter)
            for target, result in zip(targets, results, strict=True):
                rows.append(Row(target, concurrency, result))
                say(f"{method} c={concurrency} {target.label}: {result.count} ok, p50 {result.p50_ms:.2f} ms")
    return rows


def block_table(
    rows: Sequence[Row],
    concurrencies: Sequence[int],
    server_columns: Sequence[str],
    cpu_columns: Sequence[str],
) -> str:
    """One Markdown table of a block's rows (the rows of one method), concurrency by concurrency:
    latency, the p50 each hop adds over the row above it, the ratios to the raw row, CPU by process."""
    headers = ["path (one hop more per row)", "c", "n", "p50 ms", "+p50 ms", "p99 ms", "req/s"]
    headers += [
        "p50 vs raw",
        "req/s vs raw",
        "server CPU µs/req",
        *(f"{name} CPU µs/req" for name in cpu_columns),
    ]
    table: list[list[str]] = []
    for concurrency in concurrencies:
        block = [row for row in rows if row.concurrency == concurrency]
        raw = previous = block[0].result
        for row in block:
            r = row.result
            count = f"{r.count:,}" + (f" ({r.errors} failed)" if r.errors else "")
            added = f"{r.p50_ms - previous.p50_ms:+.2f}" if row.target.chain and r is not raw else ""
            previous = r if row.target.chain else previous
            table.append(
                [
                    row.target.label,
                    str(concurrency),
                    count,
                    f"{r.p50_ms:.2f}",
                    added,
                    f"{r.p99_ms:.2f}",
                    f"{r.rate:,.0f}",
                    ratio(r.p50_ms, raw.p50_ms),
                    ratio(r.rate, raw.rate),
                    f"{sum(r.cpu_us_per_call(name) for name in server_columns):,.0f}",
                    *(f"{r.cpu_us_per_call(name):,.0f}" for name in cpu_columns),
                ]
            )
    return markdown_table(headers, table)


def failures(rows: Sequence[Row]) -> list[str]:
    return [
        f"FAILED {row.target.method} c={row.concurrency} {row.target.label}: {row.result.first_error}"
        for row in rows
        if row.result.errors
    ]


def report(rows: Sequence[Row], settings: Settings) -> str:
    parts = [
        f"Agent slice: closed loop, at most {settings.requests:,} requests or {settings.max_seconds:g} s "
        f"per row, taken in {settings.rounds} turns with the other rows of its block, after "
        f"{settings.warmup} warm-up requests; {settings.agents} seeded agents for GET.",
    ]
    for method in ("GET", "POST"):
        block = [row for row in rows if row.target.method == method]
        parts += [
            "",
            f"`{method} {'/v1/agents/{id}' if method == 'GET' else '/v1/agents'}`",
            "",
            block_table(block, settings.concurrency, SERVER_COLUMNS, CPU_COLUMNS),
        ]
    parts += failures(rows)
    return "\n".join(parts)


@dataclass(frozen=True)
class LoadDefaults:
    """A slice benchmark's defaults for the load options every one of them takes."""

    requests: int
    max_seconds: float
    warmup: int
    rounds: int
    concurrency: tuple[int, ...]
    agents: int
    agents_help: str = "agents seeded for GET"


def run_slice_bench(
    name: str,
    description: str,
    defaults: LoadDefaults,
    start: Callable[[Callable[[str], None]], AbstractContextManager[Any]],
    measure: Callable[[Any, Settings, Callable[[str], None]], Coroutine[Any, Any, list[Row]]],
    report: Callable[[Sequence[Row], Settings], str],
    argv: Sequence[str] | None = None,
) -> int:
    """The command line of a slice benchmark: the load options, then `start` (the slice) around
    `measure`, `report`'s table and the machine line; 1 if the slice did not start or a row failed."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    d = defaults
    parser.add_argument(
        "--requests", type=int, default=d.requests, help=f"requests per row (default {d.requests})"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=d.max_seconds,
        help=f"time cap per row (default {d.max_seconds:g})",
    )
    parser.add_argument(
        "--warmup", type=int, default=d.warmup, help=f"unrecorded requests first (default {d.warmup})"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=d.rounds,
        help=f"turns a row's budget is split over (default {d.rounds})",
    )
    in_flight = " ".join(str(c) for c in d.concurrency)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=list(d.concurrency),
        help=f"in flight (default {in_flight})",
    )
    parser.add_argument("--agents", type=int, default=d.agents, help=f"{d.agents_help} (default {d.agents})")
    args = parser.parse_args(argv)
    if (
        min(args.requests, args.max_seconds, args.rounds, args.agents, *args.concurrency) <= 0
        or args.warmup < 0
    ):
        parser.error("--requests, --max-seconds, --rounds, --agents and --concurrency must be positive")
    settings = Settings(
        args.requests, args.max_seconds, args.warmup, args.rounds, tuple(args.concurrency), args.agents
    )

    def say(line: str) -> None:
        print(f"bench.{name}: {line}", file=sys.stderr, flush=True)

    machine = machine_line()
    try:
        with start(say) as running:
            rows = asyncio.run(measure(running, settings, say))
    except StartupError as exc:
        say(f"the slice did not start: {exc}")
        return 1
    print(report(rows, settings))
    print(machine)
    return 1 if any(row.result.errors for row in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_slice_bench(
        "agent_slice",
        (__doc__ or "").splitlines()[0],
        LoadDefaults(2000, 5.0, 100, 3, (1, 16), 200),
        lambda say: running_slice(progress=say),
        measure,
        report,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
