"""`python -m bench.turn_cost`: the CPU a whole turn costs, process by process, beside a LiteLLM proxy.

The stack runs as `macp up` runs it, each part its own process on 127.0.0.1 (bench/orchestrator.py
starts it): the token, conversation, agent-proxy, metering, orchestrator and tool-gateway services,
the edge, the local provider server, Envoy, and the embedded infrastructure: Postgres, Redis, Kafka
(tansu) with its log in the S3 emulation, at `macp up`'s log level (info: an access-log line per
call). The seeded tenant is on the PRO plan. Clients are WebSocket clients on Envoy's front
listener (`/v1/ws`), each in a conversation of its own with one agent and one turn per message; the
model answers exactly 20 tokens.

At 1, 20 and 50 in flight: each client's first turn is untimed (connections, token exchanges,
caches), then the CPU of every process of the stack is read from /proc (Postgres as its postmaster
with every backend, live or reaped) before and after `--turns` turns in a closed loop. Reported per
concurrency: CPU ms per whole turn by process and in total, turns/s, and the time to first token
and to the round's end (message frame sent → first `token_delta`, → RoundCompleted).

Beside it, at the same concurrencies: a LiteLLM proxy (one worker, bench/litellm-requirements.txt,
made on first use; `--no-litellm` skips it) in front of the same provider server and the same
20-token model, each call `stream: true` with its server-sent events read to the end: CPU ms per
call (the LiteLLM process and the provider server), calls/s, and the time to the first content
chunk. And the floor of the time to first token: the provider's own SDK (Anthropic's, which the
agent proxy speaks to the local server) streaming the same answer straight from the provider server,
at each concurrency right after the stack's row; the report gives what a turn adds to it. Before
any turn the idle stack's CPU is read for a few seconds: what it spends per second
with nothing to do is part of every figure at low rates.

Bounded in count and time: every row has a deadline, every turn and call its own timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bench.cpu import CLIENT, CpuMeter
from bench.orchestrator import (
    Bench,
    Turn,
    Workers,
    litellm_body,
    litellm_client,
    ms,
    running_litellm,
    running_parts,
    sdk_turns,
    timed_loop,
    ws_turns,
)
from bench.slice import book_behavior
from bench.stats import machine_line, markdown_table
from services.runtime.registry import PROVIDER_SERVER

CONCURRENCIES = (1, 20, 50)
TURN_MODEL = "bench-twenty"  # booked on the provider server to answer exactly TURN_TOKENS tokens
TURN_TOKENS = 20
IDLE_SECONDS = 5.0
# What `macp up` runs with where bench/orchestrator.py differs: its default log level, under which
# every service writes an access-log line per call (Kafka's log in S3 is the other difference).
AS_MACP_UP = {"MACP_LOG_LEVEL": "info"}
ROW_DEADLINE_SECONDS = 240.0  # one concurrency's untimed and timed turns together
LABELS = {
    "s3": "S3 emulation (Kafka's log)",
    "kafka": "Kafka (tansu)",
    "envoy": "Envoy",
    "postgres": "Postgres (postmaster and backends)",
    "redis": "Redis",
}


@dataclass(frozen=True)
class Row:
    """One concurrency's timed turns (or calls), their wall time and each process's CPU seconds."""

    concurrency: int
    turns: list[Turn]
    seconds: float
    cpu: dict[str, float]  # by process, plus the load generator as CLIENT

    def cpu_ms(self, name: str) -> float:
        return self.cpu[name] * 1000 / len(self.turns)

    def total_ms(self) -> float:
        return sum(self.cpu_ms(name) for name in self.cpu if name != CLIENT)


class MeteredLoop:
    """A closed loop whose timed part is bracketed by two CPU readings: each worker once untimed
    (warm), then `per_worker` times back to back, all at once. The readings are made with nothing
    in flight, between the warm round and the timed one and right after the timed one."""

    def __init__(self, meter: CpuMeter) -> None:
        self.meter = meter
        self.cpu: dict[str, float] = {}

    async def __call__(self, workers: Workers, per_worker: int) -> tuple[list[Turn], float]:
        await asyncio.gather(*(work() for work in workers))
        before = self.meter.read()
        turns, seconds = await timed_loop(workers, per_worker)
        self.cpu = CpuMeter.spent(before, self.meter.read())
        return turns, seconds


async def stack_row(bench: Bench, concurrency: int, turns: int) -> Row:
    loop = MeteredLoop(CpuMeter(bench.pids))
    per_client = max(1, turns // concurrency)
    async with asyncio.timeout(ROW_DEADLINE_SECONDS):
        done, seconds = await ws_turns(bench, TURN_MODEL, concurrency, per_client, loop)
    return Row(concurrency, done, seconds, loop.cpu)


async def litellm_row(url: str, pids: Mapping[str, int], concurrency: int, calls: int) -> Row:
    """Streamed chat completions through the LiteLLM proxy, each read to its last event."""
    loop = MeteredLoop(CpuMeter(pids))
    body = litellm_body(TURN_MODEL, stream=True)
    async with litellm_client(url, concurrency) as http:

        async def one() -> Turn:
            started = time.perf_counter()
            first, words, done = 0.0, 0, False
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data:") or done:
                        continue  # blank separators, comments, anything after [DONE]
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        done = True
                        continue
                    choices = json.loads(data).get("choices") or [{}]
                    content = (choices[0].get("delta") or {}).get("content")
                    if content:
                        first = first or time.perf_counter() - started
                        words += len(content.split())
            if not done:
                raise RuntimeError("the LiteLLM stream ended without its [DONE] event")
            return Turn(first, time.perf_counter() - started, words)

        async with asyncio.timeout(ROW_DEADLINE_SECONDS):
            done_calls, seconds = await loop([one] * concurrency, max(1, calls // concurrency))
    return Row(concurrency, done_calls, seconds, loop.cpu)


async def sdk_row(bench: Bench, concurrency: int, calls: int) -> Row:
    """The provider's own SDK (Anthropic's, the agent proxy's protocol to the local server) streaming
    the same answer straight from the provider server: the floor of a turn's time to first token."""
    provider = PROVIDER_SERVER.name
    loop = MeteredLoop(CpuMeter({provider: bench.pids[provider]}))
    async with asyncio.timeout(ROW_DEADLINE_SECONDS):
        done, seconds = await sdk_turns(bench, TURN_MODEL, concurrency, max(1, calls // concurrency), loop)
    return Row(concurrency, done, seconds, loop.cpu)


def idle_cpu_ms_per_second(pids: Mapping[str, int], seconds: float) -> dict[str, float]:
    """What each process of the stack spends per second with no turn in flight (health checks,
    timers, pollers), in ms."""
    meter = CpuMeter(pids)
    before = meter.read()
    time.sleep(seconds)
    spent = CpuMeter.spent(before, meter.read())
    return {name: value * 1000 / seconds for name, value in spent.items() if name != CLIENT}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_cost", description=__doc__)
    parser.add_argument(
        "--turns", type=int, default=300, help="timed turns (and LiteLLM calls) per concurrency"
    )
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM rows")
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help=f"in flight (repeatable); default {', '.join(map(str, CONCURRENCIES))}",
    )
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error("--turns: expected a positive number of turns")
    concurrencies: tuple[int, ...] = tuple(args.concurrency or CONCURRENCIES)
    if min(concurrencies) < 1:
        parser.error("--concurrency: expected a positive number in flight")

    def say(line: str) -> None:
        print(f"# {line}", file=sys.stderr, flush=True)

    header = machine_line()
    stack_rows: list[Row] = []
    sdk_rows: list[Row] = []
    litellm_rows: list[Row] = []
    with running_parts(say, kafka_storage="s3", overrides=AS_MACP_UP) as bench:
        book_behavior(bench.provider_url, TURN_MODEL, f"tokens={TURN_TOKENS}")
        say(f"idle stack for {IDLE_SECONDS:g} s")
        idle = idle_cpu_ms_per_second(bench.pids, IDLE_SECONDS)
        for concurrency in concurrencies:
            say(f"turns at {concurrency} in flight")
            stack_rows.append(asyncio.run(stack_row(bench, concurrency, args.turns)))
            say(progress_line(stack_rows[-1]))
            say(f"the provider SDK straight to the provider server at {concurrency} in flight")
            sdk_rows.append(asyncio.run(sdk_row(bench, concurrency, args.turns)))
            say(progress_line(sdk_rows[-1]))
        if not args.no_litellm:
            with running_litellm(bench, say, model=TURN_MODEL) as litellm:
                pids = {"litellm": litellm.pid, PROVIDER_SERVER.name: bench.pids[PROVIDER_SERVER.name]}
                for concurrency in concurrencies:
                    say(f"LiteLLM streamed calls at {concurrency} in flight")
                    litellm_rows.append(asyncio.run(litellm_row(litellm.url, pids, concurrency, args.turns)))
                    say(progress_line(litellm_rows[-1]))
    print(report(header, idle, stack_rows, litellm_rows))
    print(f"\n{first_token_table(stack_rows, sdk_rows)}")
    return 0


def progress_line(row: Row) -> str:
    return (
        f"c={row.concurrency}: {len(row.turns)} in {row.seconds:.1f} s, "
        f"{row.total_ms():.1f} ms CPU each, TTFT p50 {ms([t.first_token for t in row.turns], 0.5):.1f} ms"
    )


# --- the report -----------------------------------------------------------------------------------


def _rate_and_times(row: Row) -> list[str]:
    first = [t.first_token for t in row.turns]
    return [
        f"{len(row.turns) / row.seconds:.1f}",
        f"{ms(first, 0.5):.1f}",
        f"{ms(first, 0.99):.1f}",
        f"{ms([t.total for t in row.turns], 0.5):.1f}",
        f"{ms([t.total for t in row.turns], 0.99):.1f}",
    ]


def _process_lines(row: Row, label: Callable[[str], str]) -> list[list[str]]:
    total = row.total_ms()
    names = sorted((name for name in row.cpu if name != CLIENT), key=row.cpu_ms, reverse=True)
    return [
        [label(name), f"{row.cpu_ms(name):.1f}", f"{row.cpu_ms(name) / total:.0%}", "", "", "", "", ""]
        for name in names
    ]


def _total_lines(row: Row, title: str, clients: str) -> list[list[str]]:
    """A path's total row (in bold) and its load generator's CPU (not in the total)."""
    return [
        [f"**{title}**", f"**{row.total_ms():.1f}**", "100%", *_rate_and_times(row)],
        [f"load generator: {clients} (not in the total)", f"{row.cpu_ms(CLIENT):.1f}", *[""] * 6],
    ]


def concurrency_table(stack: Row, litellm: Row | None) -> str:
    lines = _process_lines(stack, lambda name: LABELS.get(name, name))
    lines += _total_lines(stack, "MACP whole turn: every process above", "WebSocket clients")
    if litellm is not None:
        lines += _process_lines(litellm, lambda name: f"{name} (for LiteLLM)")
        lines += _total_lines(
            litellm, "LiteLLM streamed call: LiteLLM and the provider server", "HTTP clients"
        )
    headers = [
        "process",
        "CPU ms per turn (call)",
        "share",
        "per s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "end p50 ms",
        "end p99 ms",
    ]
    return markdown_table(headers, lines)


def first_token_table(stack: Sequence[Row], sdk: Sequence[Row]) -> str:
    """What a whole turn adds to the time to first token over the provider's SDK called directly
    (percentile minus percentile), by concurrency."""
    lines = []
    for row, direct in zip(stack, sdk, strict=True):
        macp = [t.first_token for t in row.turns]
        floor = [t.first_token for t in direct.turns]
        lines.append(
            [
                str(row.concurrency),
                f"{ms(floor, 0.5):.1f}",
                f"{ms(floor, 0.99):.1f}",
                f"{ms(macp, 0.5):.1f}",
                f"{ms(macp, 0.99):.1f}",
                f"**{ms(macp, 0.5) - ms(floor, 0.5):.1f}**",
                f"**{ms(macp, 0.99) - ms(floor, 0.99):.1f}**",
            ]
        )
    headers = [
        "c",
        "SDK TTFT p50",
        "SDK TTFT p99",
        "MACP TTFT p50",
        "MACP TTFT p99",
        "added p50",
        "added p99",
    ]
    title = "Time to first token (ms), a whole MACP turn beside the provider SDK called directly:\n\n"
    return title + markdown_table(headers, lines)


def idle_table(idle: Mapping[str, float]) -> str:
    names = sorted(idle, key=lambda name: idle[name], reverse=True)
    lines = [[LABELS.get(name, name), f"{idle[name]:.1f}"] for name in names]
    lines.append(["**the idle stack**", f"**{sum(idle.values()):.1f}**"])
    return markdown_table(["process", "CPU ms per second"], lines)


def report(header: str, idle: Mapping[str, float], stack: Sequence[Row], litellm: Sequence[Row]) -> str:
    out = [header, ""]
    summary = []
    for index, row in enumerate(stack):
        words = sum(t.tokens for t in row.turns) / len(row.turns)
        line = [str(row.concurrency), str(len(row.turns)), f"{words:.0f}", f"**{row.total_ms():.1f}**"]
        line += _rate_and_times(row)[:3]
        if index < len(litellm):
            other = litellm[index]
            line += [f"{other.total_ms():.1f}", *_rate_and_times(other)[:3]]
            line.append(f"{row.total_ms() / other.total_ms():.1f}x")
            line.append(f"{(len(row.turns) / row.seconds) / (len(other.turns) / other.seconds):.1f}x")
        summary.append(line)
    headers = ["c", "turns", "words/answer", "MACP CPU ms/turn", "turns/s", "TTFT p50", "TTFT p99"]
    if litellm:
        headers += ["LiteLLM CPU ms/call", "calls/s", "TTFT p50", "TTFT p99", "CPU MACP/LiteLLM"]
        headers.append("rate MACP/LiteLLM")
    out.append("Per whole turn, and per LiteLLM streamed call, by concurrency (TTFT in ms):\n")
    out.append(markdown_table(headers, summary))
    out.append(f"\nThe idle stack, over {IDLE_SECONDS:g} s before any turn:\n")
    out.append(idle_table(idle))
    for index, row in enumerate(stack):
        beside = litellm[index] if index < len(litellm) else None
        out.append(f"\nAt {row.concurrency} in flight ({len(row.turns)} turns in {row.seconds:.1f} s):\n")
        out.append(concurrency_table(row, beside))
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
