"""`python -m bench.redis_parser`: redis-py's pure-Python reply parser beside hiredis's, in one run.

    .venv/bin/python -m bench.redis_parser [--commands 24000] [--concurrency 20]

The same client (RESP3, redis-py 8's default, which every service's client speaks) against the
same Redis, with only the parser class changed: a closed loop of the commands a turn makes most
(a hash read, a capped stream append, a short stream read), `--concurrency` loops at once. What it
reports is the client's CPU per command, which every service pays for every Redis call, and the
wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP3Parser

from bench.stats import machine_line, markdown_table, ratio
from services.stack.infra import ephemeral_infrastructure

PARSERS: tuple[tuple[str, type], ...] = (
    ("redis-py's Python parser (RESP3)", _AsyncRESP3Parser),
    ("hiredis (RESP3)", _AsyncHiredisParser),
)
COMMANDS_PER_ROUND = 3


async def _measure(url: str, parser: type, commands: int, concurrency: int) -> tuple[float, float]:
    """(client CPU µs per command, wall seconds)"""
    client = aioredis.Redis.from_url(url, protocol=3, parser_class=parser)
    prefix = f"bench:parser:{uuid.uuid4().hex}:"
    await client.hset(prefix + "hash", mapping={"ready": "1", "used:1": "12.5", "limit:1": "1000"})
    rounds = commands // COMMANDS_PER_ROUND // concurrency

    async def loop() -> None:
        for _ in range(rounds):
            await client.hgetall(prefix + "hash")
            await client.xadd(prefix + "stream", {"event": "x" * 120}, maxlen=1000, approximate=True)
            await client.xrange(prefix + "stream", count=10)

    await asyncio.gather(*(loop() for _ in range(concurrency)))  # warm-up: connections, scripts
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await client.delete(prefix + "hash", prefix + "stream")
    await client.aclose()
    done = rounds * COMMANDS_PER_ROUND * concurrency
    return cpu / done * 1e6, wall


async def measure(url: str, commands: int, concurrency: int, rounds: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in PARSERS}
    for _ in range(rounds):  # interleaved, so that drift in the machine's load hits both alike
        for name, parser in PARSERS:
            results[name].append(await _measure(url, parser, commands, concurrency))
    best = {name: min(runs) for name, runs in results.items()}
    baseline = best[PARSERS[0][0]][0]
    rows = [
        [name, str(concurrency), f"{commands:,}", f"{cpu:.1f}", f"{wall:.2f}", ratio(cpu, baseline)]
        for name, (cpu, wall) in best.items()
    ]
    print(machine_line())
    print()
    headers = ["parser", "c", "commands", "client CPU µs/command", "seconds", "CPU vs Python parser"]
    print(markdown_table(headers, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--commands", type=int, default=24_000, help="commands per measurement")
    parser.add_argument("--concurrency", type=int, default=20, help="loops in flight")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per parser (best kept)")
    args = parser.parse_args()
    with ephemeral_infrastructure() as infrastructure:
        url = infrastructure.env["MACP_REDIS_URL"]
        asyncio.run(measure(url, args.commands, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
