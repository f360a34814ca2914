"""`python -m bench.db_pool`: a pooled Postgres query with asyncpg's default reset on release, beside
the services' pool (services/runtime/db.py), which sends no reset query, in one run.

    .venv/bin/python -m bench.db_pool [--requests 3000] [--concurrency 1 8]

Both pools are asyncpg pools of the same size on the same server; the only difference is what a
release sends. Two calls, each as the services make them: a one-row read through the pool
(`pool.fetchrow`, as a cached miss or ListMessages does) and a one-row write in a transaction (as
AppendMessage or a metering Commit does). The client's and Postgres's CPU per call come with it.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

import asyncpg

from bench.cpu import CLIENT, CpuMeter
from bench.load import LoadResult, drive
from bench.stats import machine_line, markdown_table, ratio
from services.runtime.db import create_pool
from services.runtime.settings import PostgresSettings
from services.stack.infra import ephemeral_infrastructure

POOL_SIZE = 10
Query = Callable[[asyncpg.Pool, int], Awaitable[None]]


async def read_one(pool: asyncpg.Pool, index: int) -> None:
    await pool.fetchrow("SELECT n, note FROM bench_pool WHERE n = $1", index % 100)


async def write_one(pool: asyncpg.Pool, index: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO bench_pool_writes (n) VALUES ($1)", index)


async def measure(url: str, postgres_pid: int, requests: int, concurrencies: list[int]) -> None:
    default_reset = await asyncpg.create_pool(dsn=url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    services_pool = await create_pool(
        PostgresSettings(url=url, pool_min_size=POOL_SIZE, pool_max_size=POOL_SIZE)
    )
    await services_pool.execute(
        "CREATE TABLE IF NOT EXISTS bench_pool (n int PRIMARY KEY, note text NOT NULL);"
        "INSERT INTO bench_pool SELECT n, 'row ' || n FROM generate_series(0, 99) AS n"
        " ON CONFLICT DO NOTHING;"
        "CREATE TABLE IF NOT EXISTS bench_pool_writes (n int NOT NULL)"
    )
    meter = CpuMeter({"postgres": postgres_pid})
    rows: list[list[str]] = []
    for query_name, query in (
        ("read: pool.fetchrow", read_one),
        ("write: one INSERT in a transaction", write_one),
    ):
        for concurrency in concurrencies:
            results: dict[str, LoadResult] = {}
            for pool_name, pool in (
                ("asyncpg default (a reset query per release)", default_reset),
                ("the services' pool (no reset query)", services_pool),
            ):
                results[pool_name] = await drive(
                    partial(query, pool),
                    concurrency=concurrency,
                    requests=requests,
                    max_seconds=20,
                    warmup=200,
                    meter=meter,
                )
            baseline = next(iter(results.values()))
            for pool_name, result in results.items():
                rows.append(
                    [
                        query_name,
                        pool_name,
                        str(concurrency),
                        f"{result.count:,}",
                        f"{result.p50_ms:.3f}",
                        f"{result.p99_ms:.3f}",
                        f"{result.rate:,.0f}",
                        ratio(result.rate, baseline.rate),
                        f"{result.cpu_us_per_call(CLIENT):.0f}",
                        f"{result.cpu_us_per_call('postgres'):.0f}",
                        str(result.errors),
                    ]
                )
    await services_pool.execute("DROP TABLE bench_pool; DROP TABLE bench_pool_writes")
    await default_reset.close()
    await services_pool.close()
    print(machine_line())
    print()
    headers = ["call", "pool", "c", "n", "p50 ms", "p99 ms", "per s", "vs default", "client CPU µs/call"]
    print(markdown_table([*headers, "postgres CPU µs/call", "errors"], rows, right_from=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3_000, help="calls per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="calls in flight")
    args = parser.parse_args()
    with ephemeral_infrastructure() as infrastructure:
        pid = infrastructure.postgres.pid
        asyncio.run(
            measure(infrastructure.env["MACP_DATABASE_URL"], pid or 0, args.requests, args.concurrency)
        )


if __name__ == "__main__":
    main()
