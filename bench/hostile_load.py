"""`python -m bench.hostile_load`: another tenant's latency while one unauthenticated source sends
hostile bodies at 500 requests/s (issue 15: its p99 within 2x of its baseline).

The slice of bench/slice.py (real infrastructure, the token and conversation services, the edge
and Envoy, each in its own process), with the edge's per-source limits at their defaults (the
slice puts every other threshold out of reach), all on 127.0.0.1. In one run, through Envoy's
front listener:

1. baseline: the seeded tenant's admin lists its agents (`GET /v1/agents?page_size=10`: the edge,
   the mesh, the conversation service), open-loop at --victim-rate for --seconds, half of it
   before the attack and half after;
2. attack: the same, while a second process with no token sends --attack-rate requests/s,
   open-loop, for --seconds: deep JSON (100,000 levels), NUL characters (escaped and raw), huge
   numbers, garbage bytes and invalid UTF-8, in turn to `POST /v1/agents`, `/v1/chat/completions`,
   `/oauth2/register` (JSON) and `/oauth2/token` (a form).

Open-loop: every request is sent at its scheduled time whatever happened to the ones before, and
the victim's latency is counted from that time, so a stall shows as latency instead of as fewer
requests. Both loads are bounded in count and time and the run stops by itself; the attacker
targets only 127.0.0.1. CPU per request is each process's CPU over the phase divided by the
requests it was sent in that phase (both loads during the attack).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any
from urllib.parse import urlsplit

from bench.cpu import CpuMeter
from bench.raw_http import RawHttpClient
from bench.slice import RunningSlice, running_slice
from bench.stats import machine_line, markdown_table, percentile, ratio
from services.edge.rate_limits import SOURCE_DEFAULT, SOURCE_FAILURES_DEFAULT, SOURCE_IN_FLIGHT_DEFAULT

VICTIM_PATH = "/v1/agents?page_size=10"
VICTIM_CONNECTIONS = 16
ATTACK_CONNECTIONS = 128
# How long the requests still in flight when a phase's schedule ends may take before they are cut.
DRAIN_SECONDS = 10.0
HOSTS = ("127.0.0.1",)
ATTACKER = "attacker"


def hostile_bodies() -> list[tuple[str, bytes]]:
    """The bodies the attacker sends, by name (the same every run)."""
    deep = 100_000
    garbage = random.Random(15).randbytes(4096)
    return [
        ("deep JSON", b'{"name": ' + b"[" * deep + b"]" * deep + b"}"),
        ("escaped NUL", b'{"name": "a\\u0000b", "systemPrompt": "\\u0000", "title": "\\u0000"}'),
        ("raw NUL", b'{"name": "a\x00b"}'),
        ("huge numbers", b'{"name": "x", "maxTokens": ' + b"9" * 5000 + b', "temperature": 1e400}'),
        ("garbage", garbage),
        ("invalid UTF-8", b'{"name": "\xff\xfe\xfd"}'),
    ]


TARGETS = (
    ("/v1/agents", "application/json"),
    ("/v1/chat/completions", "application/json"),
    ("/oauth2/register", "application/json"),
    ("/oauth2/token", "application/x-www-form-urlencoded"),
)


def attack_requests(host: str, port: int) -> list[bytes]:
    """Every (target, body) pair as the bytes of one HTTP/1.1 request, with no token."""
    requests = []
    for _, body in hostile_bodies():
        for path, content_type in TARGETS:
            if content_type != "application/json":
                body = b"grant_type=password&username=admin&password=" + body
            head = (
                f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            )
            requests.append(head.encode() + body)
    return requests


class _Poster:
    """Keep-alive connections to one origin (at most `limit`), each request on an idle one; a
    connection the server closed, or that failed, is dropped and another opened."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self._host, self._port, self._limit = host, port, limit
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self._open = 0

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle.empty() and self._open < self._limit:
            self._open += 1
            try:
                return await asyncio.open_connection(self._host, self._port, limit=1 << 20)
            except OSError:
                self._open -= 1
                raise
        return await self._idle.get()

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._open -= 1
        writer.close()

    async def send(self, request: bytes) -> int:
        """The answer's status; 0 when the connection failed."""
        try:
            reader, writer = await self._take()
        except OSError:
            return 0
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            fields = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(b":") for line in lines[1:])
            }
            length = fields.get(b"content-length")
            if length is None:
                await reader.read()  # framed by the close
                self._drop(writer)
                return status
            await reader.readexactly(int(length))
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self._drop(writer)
            return 0
        if fields.get(b"connection", b"").lower() == b"close":
            self._drop(writer)
        else:
            self._idle.put_nowait((reader, writer))
        return status


async def open_loop(
    rate: float, seconds: float, send: Callable[[int, float], Coroutine[Any, Any, None]]
) -> int:
    """Calls `send(index, scheduled time)` at `rate` per second for `seconds`, never waiting for an
    answer before the next; waits DRAIN_SECONDS at most for the last ones. How many were sent."""
    count = int(rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: set[asyncio.Task[None]] = set()
    for index in range(count):
        scheduled = start + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(send(index, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
        for task in late:
            task.cancel()
    return count


@dataclass(frozen=True)
class AttackResult:
    sent: int
    seconds: float
    statuses: dict[int, int]  # 0: the connection failed


async def _attack(url: str, rate: float, seconds: float) -> AttackResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    if host not in HOSTS:
        raise ValueError(f"the attacker targets only {', '.join(HOSTS)}, not {host}")
    requests = attack_requests(host, port)
    poster = _Poster(host, port, ATTACK_CONNECTIONS)
    statuses: Counter[int] = Counter()

    async def send(index: int, scheduled: float) -> None:
        statuses[await poster.send(requests[index % len(requests)])] += 1

    started = time.monotonic()
    sent = await open_loop(rate, seconds, send)
    return AttackResult(sent, time.monotonic() - started, dict(statuses))


def attacker(url: str, rate: float, seconds: float, go: Event, results: Connection) -> None:
    """The attacking process: waits for `go`, attacks, sends back its AttackResult."""
    go.wait(timeout=120)
    results.send(asyncio.run(_attack(url, rate, seconds)))


@dataclass(frozen=True)
class Phase:
    name: str
    latencies: list[float]  # seconds, sorted
    victim_errors: int
    cpu: dict[str, float]
    attack: AttackResult | None

    def p(self, fraction: float) -> float:
        return percentile(self.latencies, fraction)


async def _victim(running: RunningSlice, rate: float, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    async with AsyncExitStack() as stack:
        client = await RawHttpClient(running.front_url, running.edge_headers).open(VICTIM_CONNECTIONS, stack)
        loop = asyncio.get_running_loop()

        async def send(index: int, scheduled: float) -> None:
            nonlocal errors
            answer = await client.get(VICTIM_PATH)
            if answer.status != 200:
                errors += 1
            latencies.append(loop.time() - scheduled)

        await client.get(VICTIM_PATH)  # the caller's keyed limits and exchanged token, made once
        await open_loop(rate, seconds, send)
    return sorted(latencies), errors


def measure(running: RunningSlice, args: argparse.Namespace) -> list[Phase]:
    """The baseline in two halves, before and after the attack (so the noise of the shared machine
    around the attack is in it too), and the attack between them."""
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(
        target=attacker, args=(running.front_url, args.attack_rate, args.seconds, go, sending), daemon=True
    )
    process.start()
    try:
        time.sleep(2.0)  # the attacker's interpreter starts outside the measurement, then waits
        pids = {name: running.pids[name] for name in ("edge", "envoy")}
        # The attacker's CPU too: on one machine it competes with the slice.
        meter = CpuMeter(pids | ({ATTACKER: process.pid} if process.pid is not None else {}))

        def victim(seconds: float) -> tuple[list[float], int, dict[str, float]]:
            before = meter.read()
            latencies, errors = asyncio.run(_victim(running, args.victim_rate, seconds))
            return latencies, errors, meter.spent(before, meter.read())

        first = victim(args.seconds / 2)
        go.set()
        attacked = victim(args.seconds)
        if not receiving.poll(DRAIN_SECONDS + 30):
            raise RuntimeError("the attacker did not report")
        attack: AttackResult = receiving.recv()
        second = victim(args.seconds / 2)
    finally:
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
    baseline = Phase(
        "baseline (no attack; half before, half after)",
        sorted(first[0] + second[0]),
        first[1] + second[1],
        {name: first[2][name] + second[2][name] for name in first[2]},
        None,
    )
    name = f"attack: {args.attack_rate:g}/s hostile, no token"
    return [baseline, Phase(name, attacked[0], attacked[1], attacked[2], attack)]


def report(phases: list[Phase], args: argparse.Namespace) -> str:
    baseline = phases[0]
    phase_seconds = args.seconds
    rows = []
    for phase in phases:
        victims = len(phase.latencies)
        attack = phase.attack
        sent = attack.sent if attack else 0
        per_request = {name: seconds * 1e6 / max(1, victims + sent) for name, seconds in phase.cpu.items()}
        answers = (
            ", ".join(f"{status or 'failed'}: {count}" for status, count in sorted(attack.statuses.items()))
            if attack
            else "-"
        )
        rows.append(
            [
                phase.name,
                f"{victims} ({phase.victim_errors} not 200)",
                f"{phase.p(0.50) * 1000:.2f}",
                ratio(phase.p(0.50), baseline.p(0.50)),
                f"{phase.p(0.99) * 1000:.2f}",
                ratio(phase.p(0.99), baseline.p(0.99)),
                f"{sent / attack.seconds:.0f}" if attack else "-",
                answers,
                f"{per_request['edge']:.0f}",
                f"{per_request['envoy']:.0f}",
                f"{phase.cpu[ATTACKER] / phase_seconds * 100:.0f}%",
                f"{sum(phase.cpu.values()) / phase_seconds * 100:.0f}%",
            ]
        )
    table = markdown_table(
        [
            "phase",
            "victim requests",
            "victim p50 ms",
            "p50 / baseline",
            "victim p99 ms",
            "p99 / baseline",
            "attack req/s",
            "attack answers by status",
            "edge CPU µs/req",
            "Envoy CPU µs/req",
            "attacker CPU (of a core)",
            "all four CPU (of a core)",
        ],
        rows,
    )
    return "\n".join(
        [
            table,
            "",
            f"Victim: `GET {VICTIM_PATH}` at {args.victim_rate:g}/s through Envoy with the seeded admin's "
            f"token; attacker: {args.attack_rate:g}/s for {args.seconds:g} s, no token, one source "
            f"address; per-source limits {SOURCE_DEFAULT} (requests without a token, at most "
            f"{SOURCE_IN_FLIGHT_DEFAULT} at once) and {SOURCE_FAILURES_DEFAULT} (failed authentications).",
            machine_line(),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile_load", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase (default 30)")
    parser.add_argument(
        "--attack-rate", type=float, default=500.0, help="hostile requests per second (default 500)"
    )
    parser.add_argument(
        "--victim-rate", type=float, default=50.0, help="the other tenant's requests per second (default 50)"
    )
    args = parser.parse_args(argv)
    if min(args.seconds, args.attack_rate, args.victim_rate) <= 0 or args.seconds > 300:
        parser.error("rates must be positive and --seconds within 300")
    overrides = {
        "MACP_RATE_LIMIT_SOURCE": SOURCE_DEFAULT,
        "MACP_RATE_LIMIT_SOURCE_FAILURES": SOURCE_FAILURES_DEFAULT,
        "MACP_RATE_LIMIT_SOURCE_IN_FLIGHT": str(SOURCE_IN_FLIGHT_DEFAULT),
    }
    with running_slice(lambda line: print(line, file=sys.stderr), overrides) as running:
        phases = measure(running, args)
    print(report(phases, args))
    return 0 if all(phase.victim_errors == 0 for phase in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
