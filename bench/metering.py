"""`python -m bench.metering`: usage ingest and quota holds, each beside its raw baseline, in one run.

    .venv/bin/python -m bench.metering [--events 50000] [--pairs 3000] [--concurrency 50]
                                       [--open-rate 1000] [--open-seconds 5] [--only-open]

Ingest (events/s into Postgres):
- raw: aiokafka consumes the events from a topic of their own and asyncpg COPYs them (decoded,
  flattened, no validation, no de-duplication, no rollups) in batches of 5,000: the floor;
- end to end: the same number of distinct events plus 5% duplicates published to the usage topic,
  timed from the first publish until the metering process (its own process, as `macp up` runs it)
  has recorded every distinct one: validation, de-duplication, rollups, quota deltas and the offset
  commit included. One event recorded first, untimed, makes sure its consumer owns the partitions.
Holds (through Envoy's mesh listener, closed loop at `--concurrency` in flight):
- floor: an empty grpc.aio method called straight, no Envoy (bench/grpc_floor.py): what no
  grpc.aio service on this machine can beat at this concurrency;
- raw: redis-py EVALSHA of the metering RESERVE script itself, straight to Redis;
- Reserve over gRPC through Envoy;
- Reserve + Commit pairs (one API_CALL event per Commit), the cost of one metered turn.
The holds use the API-calls meter, which no catalog plan limits, so no call is refused.
Holds in an open loop (`--open-rate` calls due per second, whatever the answers do; `--only-open`
runs these rows alone): the floor, Reserve and a round's ReserveHolds, in bench/metering_open.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import asyncpg
import grpc
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from macp.common.v1 import usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb
from macp.metering.v1 import metering_service_pb2_grpc as pb_grpc
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from bench.cpu import CLIENT, CpuMeter
from bench.grpc_floor import floor_echo, floor_server
from bench.load import LoadResult, drive
from bench.metering_open import open_holds, open_table
from bench.service_tokens import service_token
from bench.slice import cluster_healthy, start_apps_and_envoy
from bench.stats import machine_line, markdown_table, ratio
from services.metering import quota_scripts
from services.metering.events import decode
from services.stack.config import free_port
from services.stack.infra import ephemeral_infrastructure, scratch_data_dir
from services.stack.probes import answers
from services.stack.process import StartupError
from services.stack.secrets import local_secrets
from services.stack.seed import LocalAdmin, seed

APPS = ("token", "metering")
FLOOR = "floor server"
FLOOR_ROW = "floor: an empty grpc.aio method, straight (no Envoy, no interceptors, no Redis)"
CPU_COLUMNS = (CLIENT, FLOOR, "envoy", "metering")  # CPU µs per call, in the order of a call's hops
OPEN_CPU_COLUMNS = (FLOOR, "envoy", "metering", "redis")  # the open-loop rows add the client's own
USAGE_TOPIC = "bench.usage.v1"
RAW_TOPIC = "bench.raw.v1"
BATCH = 5_000
READY_SECONDS = 60.0
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


@dataclass(frozen=True)
class Stack:
    environ: dict[str, str]
    mesh_address: str
    admin: LocalAdmin
    initial_access_token: str
    pids: dict[str, int]  # metering, envoy, redis: the processes whose CPU per hold the tables show


@contextmanager
def running_stack() -> Iterator[Stack]:
    """Infrastructure, the token and metering services as their own processes, Envoy in front."""
    with ExitStack() as stack:
        infrastructure = stack.enter_context(ephemeral_infrastructure())
        directory = stack.enter_context(scratch_data_dir("macp-bench-metering-"))
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MACP_")}
        environ.update(infrastructure.env)
        for variable in (
            "MACP_TOKEN_PORT",
            "MACP_TOKEN_METRICS_PORT",
            "MACP_METERING_PORT",
            "MACP_METERING_METRICS_PORT",
            "MACP_EDGE_PORT",
            "MACP_ENVOY_FRONT_PORT",
            "MACP_ENVOY_MESH_PORT",
            "MACP_ENVOY_ADMIN_PORT",
        ):
            environ[variable] = str(free_port())
        environ["MACP_MESH_ADDRESS"] = f"127.0.0.1:{environ['MACP_ENVOY_MESH_PORT']}"
        environ["MACP_KAFKA_USAGE_TOPIC"] = USAGE_TOPIC
        environ["MACP_LOG_LEVEL"] = "warning"
        environ.update(local_secrets(directory, environ))
        processes, envoy = start_apps_and_envoy(stack, environ, directory, APPS)
        deadline = time.monotonic() + READY_SECONDS
        for app, process in processes:
            process.wait_ready(partial(answers, app.probe), max(0.0, deadline - time.monotonic()))
        for cluster in APPS:
            while not cluster_healthy(envoy.ports.admin, cluster):
                if time.monotonic() > deadline:
                    raise StartupError(f"Envoy saw no healthy {cluster}")
                time.sleep(0.1)
        admin = seed(directory, envoy.mesh_address, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"]).admin
        named = {app.name: process.pid for app, process in processes} | {
            "envoy": envoy.pid,
            "redis": infrastructure.redis.pid,
        }
        pids = {name: pid for name, pid in named.items() if pid is not None and name != "token"}
        yield Stack(environ, envoy.mesh_address, admin, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"], pids)


def turn_events(count: int, tenants: int = 20) -> list[bytes]:
    now = datetime.now(UTC)
    values = []
    for i in range(count):
        event = usage_pb2.UsageEvent(
            event_id=str(uuid.uuid4()),
            tenant_id=f"bench-{i % tenants}",
            user_id="u-1",
            agent_id=str(uuid.uuid4()),
            conversation_id=str(uuid.uuid4()),
            type=usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN,
            dimensions=usage_pb2.UsageDimensions(input_tokens=i % 500, output_tokens=20, model="echo-1"),
        )
        event.time.FromDatetime(now)
        values.append(event.SerializeToString())
    return values


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=v[2:14]) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_ingest(stack: Stack, values: list[bytes]) -> float:
    """Seconds to consume `values` from their topic and COPY them into Postgres, batch by batch."""
    bootstrap = stack.environ["MACP_KAFKA_BOOTSTRAP"]
    await produce(bootstrap, RAW_TOPIC, values)
    db = await asyncpg.connect(stack.environ["MACP_DATABASE_URL"])
    await db.execute(
        "CREATE TABLE bench_raw (event_id uuid, tenant_id text, event_type smallint, event_time timestamptz,"
        " input_tokens bigint, output_tokens bigint, payload bytea)"
    )
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        tps = [TopicPartition(RAW_TOPIC, p) for p in sorted(reader.partitions_for_topic(RAW_TOPIC) or ())]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        began = time.perf_counter()
        copied = 0
        while copied < len(values):
            batches = await reader.getmany(timeout_ms=200, max_records=BATCH)
            rows = []
            for record in (r for part in batches.values() for r in part):
                event = decode(record.value)
                rows.append(
                    (
                        uuid.UUID(event.event_id),
                        event.tenant_id,
                        event.type,
                        event.time.ToDatetime(tzinfo=UTC),
                        event.dimensions.input_tokens,
                        event.dimensions.output_tokens,
                        record.value,
                    )
                )
            if rows:
                await db.copy_records_to_table("bench_raw", records=rows)
                copied += len(rows)
        return time.perf_counter() - began
    finally:
        await reader.stop()
        await db.close()


async def metering_ingest(stack: Stack, values: list[bytes]) -> float:
    """Seconds from the first publish of `values` (+5% duplicates) until all are recorded.

    One event goes through first, untimed: it waits for the metering process's consumer to own the
    partitions (joining the group takes seconds) and warms its connection, as the raw baseline is
    timed only once its reader is assigned."""
    rng = random.Random(6)
    published = values + [rng.choice(values) for _ in range(len(values) // 20)]
    rng.shuffle(published)
    bootstrap = stack.environ["MACP_KAFKA_BOOTSTRAP"]
    db = await asyncpg.connect(stack.environ["MACP_DATABASE_URL"])

    async def recorded(count: int) -> None:
        while True:
            if await db.fetchval("SELECT count(*) FROM metering_usage_events") >= count:
                return
            await asyncio.sleep(0.05)

    try:
        await produce(bootstrap, USAGE_TOPIC, turn_events(1))
        await asyncio.wait_for(recorded(1), READY_SECONDS)
        began = time.perf_counter()
        await produce(bootstrap, USAGE_TOPIC, published)
        await recorded(len(values) + 1)
        return time.perf_counter() - began
    finally:
        await db.close()


async def turn_token(stack: Stack) -> str:
    """A user token for metering with usage:write, the way the orchestrator holds one."""
    async with grpc.aio.insecure_channel(stack.mesh_address) as channel:
        return await service_token(
            token_grpc.TokenServiceStub(channel),
            stack.initial_access_token,
            stack.admin.tenant_id,
            stack.admin.username,
            stack.admin.password,
            "metering",
            "usage:read usage:write",
        )


async def holds(stack: Stack, pairs: int, concurrency: int, floor: tuple[str, int]) -> dict[str, LoadResult]:
    tenant = stack.admin.tenant_id
    token = await turn_token(stack)
    metadata = (("authorization", f"Bearer {token}"),)
    floor_address, floor_pid = floor
    meter = CpuMeter(stack.pids | {FLOOR: floor_pid})
    results: dict[str, LoadResult] = {}
    redis = aioredis.from_url(stack.environ["MACP_REDIS_URL"])
    script = redis.register_script(quota_scripts.RESERVE)
    prefix = f"bench:{{{tenant}}}:"
    await redis.hset(prefix + "quota:raw", mapping={"ready": "1"})

    async def raw(index: int) -> None:
        hold = str(uuid.uuid4())
        await script(
            keys=[prefix + "quota:raw", prefix + "holds:raw", prefix + "hold:" + hold],
            args=[pb.METER_API_CALLS, 1, 60000],
        )

    async with floor_echo(floor_address) as echo, grpc.aio.insecure_channel(stack.mesh_address) as channel:
        stub = pb_grpc.MeteringServiceStub(channel)
        request = pb.ReserveRequest(
            reservation_id=str(uuid.uuid4()), tenant_id=tenant, meter=pb.METER_API_CALLS, quantity=1
        ).SerializeToString()

        async def empty(index: int) -> None:
            await echo(request, timeout=10)

        async def reserve(index: int) -> str:
            hold = str(uuid.uuid4())
            await stub.Reserve(
                pb.ReserveRequest(
                    reservation_id=hold, tenant_id=tenant, meter=pb.METER_API_CALLS, quantity=1
                ),
                metadata=metadata,
                timeout=10,
            )
            return hold

        async def reserve_only(index: int) -> None:
            await reserve(index)

        async def pair(index: int) -> None:
            hold = await reserve(index)
            event = usage_pb2.UsageEvent(
                event_id=str(uuid.uuid4()), tenant_id=tenant, type=usage_pb2.USAGE_EVENT_TYPE_API_CALL
            )
            event.time.GetCurrentTime()
            await stub.Commit(
                pb.CommitRequest(reservation_id=hold, usage=[event]), metadata=metadata, timeout=10
            )

        for name, call in (
            (FLOOR_ROW, empty),
            ("raw: EVALSHA of the RESERVE script, straight to Redis", raw),
            ("Reserve over gRPC through Envoy's mesh listener", reserve_only),
            ("Reserve + Commit over gRPC through Envoy's mesh listener", pair),
        ):
            results[name] = await drive(
                call, concurrency=concurrency, requests=pairs, max_seconds=20, warmup=200, meter=meter
            )
    await redis.aclose()
    return results


async def open_loop(stack: Stack, args: argparse.Namespace) -> str:
    """The open-loop hold rows as a table, against a floor server of their own."""
    token = await turn_token(stack)
    with floor_server() as (floor_address, floor_pid):
        results = await open_holds(
            stack.mesh_address,
            stack.admin.tenant_id,
            token,
            floor_address,
            stack.pids | {FLOOR: floor_pid},
            rate=args.open_rate,
            seconds=args.open_seconds,
        )
    return open_table(results, OPEN_CPU_COLUMNS)


async def measure(stack: Stack, args: argparse.Namespace) -> None:
    if args.only_open:
        print(machine_line())
        print()
        print(await open_loop(stack, args))
        return
    raw_seconds = await raw_ingest(stack, turn_events(args.events))
    metering_seconds = await metering_ingest(stack, turn_events(args.events))
    with floor_server() as floor:
        hold_results = await holds(stack, args.pairs, args.concurrency, floor)
    raw_rate = args.events / raw_seconds
    rows = [
        [
            "raw: aiokafka consume + asyncpg COPY (decoded, no validation, no de-duplication)",
            f"{args.events:,}",
            f"{raw_seconds:.2f}",
            f"{raw_rate:,.0f}",
            "1x",
        ],
        [
            "end to end: publish → Kafka → metering → Postgres (+5% duplicates, de-duplicated)",
            f"{args.events:,}",
            f"{metering_seconds:.2f}",
            f"{args.events / metering_seconds:,.0f}",
            ratio(args.events / metering_seconds, raw_rate),
        ],
    ]
    print(machine_line())
    print()
    print(markdown_table(["ingest path", "distinct events", "seconds", "events/s", "vs raw"], rows))
    print()
    hold_rows = [
        [
            name,
            str(args.concurrency),
            f"{r.count:,}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.rate:,.0f}",
            str(r.errors),
            *(f"{r.cpu_us_per_call(process):.0f}" for process in CPU_COLUMNS),
        ]
        for name, r in hold_results.items()
    ]
    cpu_headers = [f"{process} CPU µs/call" for process in CPU_COLUMNS]
    print(
        markdown_table(
            ["hold path", "c", "n", "p50 ms", "p99 ms", "per s", "errors", *cpu_headers], hold_rows
        )
    )
    print()
    print(await open_loop(stack, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000, help="distinct events per ingest path")
    parser.add_argument("--pairs", type=int, default=3_000, help="calls per hold path")
    parser.add_argument("--concurrency", type=int, default=50, help="hold calls in flight")
    parser.add_argument("--open-rate", type=float, default=1_000, help="open-loop calls due per second")
    parser.add_argument("--open-seconds", type=float, default=5, help="open-loop recorded seconds per row")
    parser.add_argument("--only-open", action="store_true", help="run the open-loop hold rows only")
    args = parser.parse_args()
    if args.open_rate <= 0 or args.open_seconds <= 0:
        parser.error("--open-rate and --open-seconds must be positive")
    with running_stack() as stack:  # it seeds the local admin with its own event loop
        asyncio.run(measure(stack, args))


if __name__ == "__main__":
    main()
