"""Quota holds in an open loop: calls started at a fixed rate whatever the answers do.

Run by `python -m bench.metering` after its closed-loop rows, or alone with `--only-open`:

    .venv/bin/python -m bench.metering --only-open [--open-rate 1000] [--open-seconds 5]

The closed-loop rows keep 50 calls in flight, so a slow answer slows the load down and the tail is
measured at whatever rate the path allowed. Callers of metering do not wait for each other: every
round of every conversation reserves on its own. Here calls are due at t0 + i/rate and each is
timed from its due instant (bench/load.py `drive_open`), so queueing, in the services or in the
client's own event loop, is part of the latency. Three rows, each after a warm-up at the same rate:
- floor: the empty grpc.aio method of bench/grpc_floor.py, straight (no Envoy): what any grpc.aio
  service answers at this rate on this machine;
- Reserve through Envoy's mesh listener, one hold on the API-calls meter (as the closed-loop row);
- ReserveHolds through Envoy with two holds, a round's orchestration and its first turn, which is
  the call the orchestrator makes once per round (services/orchestrator/ledger.py `reserve_holds`).
The local tenant is on the pro plan, whose limits on turns and orchestrations are soft: nothing is
refused, and a hold past the allowance is still taken (marked as overage).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import grpc
import psutil
from macp.metering.v1 import metering_service_pb2 as pb
from macp.metering.v1 import metering_service_pb2_grpc as pb_grpc

from bench.cpu import CLIENT, CpuMeter
from bench.grpc_floor import floor_echo
from bench.load import OpenLoadResult, drive_open
from bench.stats import markdown_table

WARMUP_SECONDS = 2.0  # opens the channels, fills the services' caches and lets Envoy's pools grow
FLOOR_ROW = "floor: an empty grpc.aio method, straight (no Envoy)"
RESERVE_ROW = "Reserve through Envoy's mesh listener (one hold)"
HOLDS_ROW = "ReserveHolds through Envoy's mesh listener (two holds: a round's orchestration and turn)"
MACHINE = "machine"  # the meter's reading of the whole machine's busy CPU


class MachineCpuMeter(CpuMeter):
    """Also reads the busy CPU of the whole machine: what other processes took while a row ran,
    since on two shared cores a neighbour's test moves a tail at 1,000 calls/s by a factor of ten."""

    def read(self) -> dict[str, float]:
        times = psutil.cpu_times()
        # guest time is already counted in user time; idle and iowait are the CPU not taken
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        busy -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        return super().read() | {MACHINE: busy}


def other_cores(result: OpenLoadResult) -> float:
    """Cores taken on average during the row by every process the meter does not name."""
    cpu = result.load.cpu
    named = sum(seconds for name, seconds in cpu.items() if name != MACHINE)
    return max(0.0, cpu.get(MACHINE, 0.0) - named) / result.load.elapsed if result.load.elapsed else 0.0


class HoldRefused(Exception):
    """A hold of ReserveHolds came back refused: the call answered, but not as a round needs."""


async def open_holds(
    mesh_address: str,
    tenant_id: str,
    token: str,
    floor_address: str,
    pids: Mapping[str, int],
    *,
    rate: float,
    seconds: float,
) -> dict[str, OpenLoadResult]:
    """The three open-loop rows, one after the other, each warmed up at `rate` first; the CPU of
    the processes in `pids` (with their children) and of this one, the client, read around each."""
    meter = MachineCpuMeter(pids)
    metadata = (("authorization", f"Bearer {token}"),)
    async with (
        floor_echo(floor_address) as echo,
        grpc.aio.insecure_channel(mesh_address) as channel,
    ):
        stub = pb_grpc.MeteringServiceStub(channel)
        # the floor answers the bytes of a Reserve request: as much to carry as a real one
        payload = pb.ReserveRequest(
            reservation_id=str(uuid.uuid4()), tenant_id=tenant_id, meter=pb.METER_API_CALLS, quantity=1
        ).SerializeToString()

        async def empty(index: int) -> None:
            await echo(payload, timeout=10)

        async def reserve(index: int) -> None:
            request = pb.ReserveRequest(
                reservation_id=str(uuid.uuid4()), tenant_id=tenant_id, meter=pb.METER_API_CALLS, quantity=1
            )
            await stub.Reserve(request, metadata=metadata, timeout=10)

        async def round_holds(index: int) -> None:
            conversation = str(uuid.uuid4())
            holds = [
                pb.ReserveRequest(
                    reservation_id=str(uuid.uuid4()),
                    tenant_id=tenant_id,
                    meter=pb.METER_ORCHESTRATIONS,
                    quantity=1,
                    conversation_id=conversation,
                ),
                pb.ReserveRequest(
                    reservation_id=str(uuid.uuid4()),
                    tenant_id=tenant_id,
                    meter=pb.METER_AGENT_TURNS,
                    quantity=1,
                    conversation_id=conversation,
                    turn_id=str(uuid.uuid4()),
                ),
            ]
            response = await stub.ReserveHolds(
                pb.ReserveHoldsRequest(holds=holds), metadata=metadata, timeout=10
            )
            for result in response.results:
                if not result.HasField("reserved"):
                    raise HoldRefused(f"{result.failure.code}: {result.failure.message}")

        results: dict[str, OpenLoadResult] = {}
        for name, call in ((FLOOR_ROW, empty), (RESERVE_ROW, reserve), (HOLDS_ROW, round_holds)):
            results[name] = await drive_open(
                call, rate=rate, seconds=seconds, warmup_seconds=WARMUP_SECONDS, meter=meter
            )
    return results


def open_table(results: dict[str, OpenLoadResult], cpu_columns: Sequence[str]) -> str:
    """The open-loop rows as a Markdown table: CPU µs per call of the client and of each process in
    `cpu_columns`, and the cores every other process of the machine took meanwhile."""
    rows = [
        [
            name,
            f"{r.target_rate:,.0f}",
            f"{r.start_rate:,.0f}",
            f"{r.load.count:,}",
            f"{r.load.p50_ms:.2f}",
            f"{r.load.p99_ms:.2f}",
            f"{r.load.p999_ms:.2f}",
            f"{r.load.max_ms:.2f}",
            str(r.load.errors),
            f"{r.start_lag_p99_ms:.2f}",
            f"{r.from_start_p99_ms:.2f}",
            *(f"{r.load.cpu_us_per_call(process):.0f}" for process in (CLIENT, *cpu_columns)),
            f"{other_cores(r):.2f}",
        ]
        for name, r in results.items()
    ]
    headers = [
        "open-loop path",
        "due per s",
        "started per s",
        "n",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "start lag p99 ms",
        "p99 ms from start",
        *(f"{process} CPU µs/call" for process in (CLIENT, *cpu_columns)),
        "other processes' CPU, cores",
    ]
    errors = [f"{name}: {r.load.first_error}" for name, r in results.items() if r.load.first_error]
    return markdown_table(headers, rows) + "".join(f"\n\nfirst error of {line}" for line in errors)
