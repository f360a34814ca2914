"""`python -m bench.replicas`: whole turns with one and with two replicas of everything, same run.

Each pass starts `macp up` (the console script, on free ports: bench/chaos_stack.py's
`running_stack`, which also lifts the seeded tenant to PRO and the rate limits out of the way),
first with one process of every service and of the edge, then with `--replicas 2`, and again in
that order `--passes` times, so both settings see the same machine drift. In each pass:

- time to first token at concurrency 1: a WebSocket client's message frame → its first
  `token_delta` (Envoy, an edge, an orchestrator, the agent proxy, the provider server, back through
  the event log), beside the official anthropic SDK streaming the same model straight from the same
  provider server (the added time is the difference);
- whole turns per second at `--in-flight` clients in a closed loop (message → `round_completed`),
  with their p50 and p99;
- CPU per whole turn: user + system seconds of every process stack.json names (the services, the
  edges, Envoy, Postgres, Redis, Kafka, S3, the provider server, with their children) over the
  sustained phase, divided by its turns; and the load generator's own;
- idle CPU: the same processes' CPU per second over IDLE_SECONDS with no turn running.

On two cores the second replica of everything brings no capacity, only more processes contending
for the same two cores, so this measures what replication costs, not what it gains: each replica
is another process that holds connections, runs readiness checks and keeps its own caches warm.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.chaos_stack import Stack, running_stack
from bench.cpu import CLIENT, CpuMeter
from bench.orchestrator import SHORT_MODEL, Bench, Turn, sdk_turns, ws_turns
from bench.stats import machine_line, markdown_table, percentile
from services.stack.replicas import MAX_REPLICAS

Say = Callable[[str], None]
# The stack's background work, read with no turn running: readiness checks, key refreshes, consumer
# heartbeats, outbox polls. Each replica does its own, which is part of what replication costs.
IDLE_SECONDS = 10.0


@dataclass(frozen=True)
class Pass:
    """One stack's figures."""

    replicas: int
    processes: int  # MACP processes: every replica of every service and of the edge
    sdk_first: list[float]  # seconds
    ws_first: list[float]
    sustained: list[Turn]
    sustained_seconds: float
    stack_cpu: float  # seconds over the sustained phase, every process of the stack
    client_cpu: float
    idle_cpu: float  # the stack's CPU seconds per second with no turn running (its background work)

    @property
    def turns_per_second(self) -> float:
        return len(self.sustained) / self.sustained_seconds

    def cpu_ms_per_turn(self) -> float:
        return self.stack_cpu / len(self.sustained) * 1000


def _bench_of(stack: Stack) -> Bench:
    document = stack.document()
    provider = next(c for c in document["components"] if c.get("name") == "provider-server")
    pids = {
        str(c["name"]): int(c["pid"])
        for c in document["components"]
        if c.get("pid") and not c.get("external")
    }
    return Bench(
        front_url=stack.front_url,
        provider_url=str(provider["url"]),
        edge_token=stack.sign_in(),
        directory=stack.data_dir,
        pids=pids,
    )


async def _measure(bench: Bench, replicas: int, ttft_turns: int, in_flight: int, per_client: int) -> Pass:
    await ws_turns(bench, SHORT_MODEL, 1, 5)  # warm: token exchanges, caches, pooled connections
    sdk, _ = await sdk_turns(bench, SHORT_MODEL, 1, ttft_turns)
    ws, _ = await ws_turns(bench, SHORT_MODEL, 1, ttft_turns)
    meter = CpuMeter(bench.pids)
    before = meter.read()
    await asyncio.sleep(IDLE_SECONDS)
    idle = CpuMeter.spent(before, meter.read())
    idle.pop(CLIENT)
    before = meter.read()
    sustained, seconds = await ws_turns(bench, SHORT_MODEL, in_flight, per_client)
    spent = CpuMeter.spent(before, meter.read())
    client = spent.pop(CLIENT)
    processes = sum(1 for name in bench.pids if name not in ("postgres", "redis", "kafka", "s3", "envoy"))
    return Pass(
        replicas=replicas,
        processes=processes - 1,  # the provider server stands in for the providers, not MACP
        sdk_first=[t.first_token for t in sdk],
        ws_first=[t.first_token for t in ws],
        sustained=sustained,
        sustained_seconds=seconds,
        stack_cpu=sum(spent.values()),
        client_cpu=client,
        idle_cpu=sum(idle.values()) / IDLE_SECONDS,
    )


def run_pass(replicas: int, args: argparse.Namespace, say: Say) -> Pass:
    with running_stack(say, replicas=replicas) as stack:
        bench = _bench_of(stack)
        say(f"{replicas} replica(s): measuring")
        return asyncio.run(_measure(bench, replicas, args.ttft_turns, args.in_flight, args.per_client))


def _ms(values: Sequence[float], fraction: float) -> float:
    return percentile(sorted(values), fraction) * 1000


def report(passes: Sequence[Pass], in_flight: int) -> str:
    rows = []
    for run in passes:
        totals = [t.total for t in run.sustained]
        rows.append(
            [
                str(run.replicas),
                str(run.processes),
                f"{_ms(run.sdk_first, 0.5):.2f}",
                f"{_ms(run.ws_first, 0.5):.2f}",
                f"{_ms(run.ws_first, 0.99):.2f}",
                f"**{_ms(run.ws_first, 0.5) - _ms(run.sdk_first, 0.5):.2f}**",
                f"**{run.turns_per_second:.1f}**",
                f"{_ms(totals, 0.5):.0f}",
                f"{_ms(totals, 0.99):.0f}",
                f"**{run.cpu_ms_per_turn():.1f}**",
                f"{run.client_cpu / len(run.sustained) * 1000:.1f}",
                f"{run.idle_cpu * 1000:.0f}",
            ]
        )
    headers = [
        "replicas",
        "MACP processes",
        "SDK TTFT p50 ms",
        "turn TTFT p50 ms",
        "turn TTFT p99 ms",
        "added TTFT p50 ms",
        f"turns/s at {in_flight}",
        "turn p50 ms",
        "turn p99 ms",
        "stack CPU ms/turn",
        "client CPU ms/turn",
        "idle stack CPU ms/s",
    ]
    lines = [machine_line(), "", markdown_table(headers, rows)]
    for replicas in sorted({run.replicas for run in passes}):
        runs = [run for run in passes if run.replicas == replicas]
        rate = statistics.median(run.turns_per_second for run in runs)
        cpu = statistics.median(run.cpu_ms_per_turn() for run in runs)
        lines.append(
            f"median of {len(runs)} pass(es) at {replicas} replica(s): "
            f"{rate:.1f} turns/s, {cpu:.1f} ms CPU/turn"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replicas", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--replicas", type=int, default=2, help="the replicated setting (default 2)")
    parser.add_argument("--passes", type=int, default=1, help="times both settings run, alternating")
    parser.add_argument("--ttft-turns", type=int, default=100, help="turns of the TTFT rows (default 100)")
    parser.add_argument("--in-flight", type=int, default=50, help="clients of the sustained row (default 50)")
    parser.add_argument("--per-client", type=int, default=8, help="turns per client sustained (default 8)")
    args = parser.parse_args(argv)
    if not 2 <= args.replicas <= MAX_REPLICAS or args.passes < 1 or args.ttft_turns < 1:
        parser.error(f"--replicas from 2 to {MAX_REPLICAS}; --passes and --ttft-turns at least 1")

    def say(line: str) -> None:
        print(f"bench.replicas: {line}", file=sys.stderr, flush=True)

    passes = [run_pass(replicas, args, say) for _ in range(args.passes) for replicas in (1, args.replicas)]
    print(report(passes, args.in_flight))
    return 0


if __name__ == "__main__":
    sys.exit(main())
