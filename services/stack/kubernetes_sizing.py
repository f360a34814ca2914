"""CPU and memory requests and limits of every Kubernetes workload, derived from docs/benchmarks.md.

A replica is sized for a design load: `DESIGN_TURNS_PER_SECOND` whole turns (or tool calls) per
second at its CPU request, so the HorizontalPodAutoscaler, which aims at `CPU_TARGET_PERCENT` of the
request, adds a replica a little before one carries that load (docs/capacity.md plans the same
way). The request is the process's idle CPU plus its CPU per turn times that rate; the figures are
measured, never guessed, and each names the benchmark section it comes from. Memory is measured
only for the edge (section 8); the other Python processes are the same interpreter with the same
libraries, so the edge's idle RSS is their reference too. docs/deploy.md repeats the reasoning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Whole turns per second one replica carries at its CPU request: docs/capacity.md's "turns/s per
# replica at 50%" for the orchestrator, the busiest process per turn (62 at 8.0 ms a turn), so its
# request is about half a core, the utilisation capacity.md plans with (its A7: metering missed its
# p99 at two-thirds busy and met it at 42%).
DESIGN_TURNS_PER_SECOND = 60
# The HPA's (and KEDA's cpu trigger's) target: this share of the request, averaged over replicas,
# so a replica is added a little before the average reaches the design load.
CPU_TARGET_PERCENT = 80
# No request below this: the kubelet's scheduling granularity is coarse and an idle replica still
# answers health checks every second.
MIN_CPU_MILLICORES = 50
# One asyncio interpreter runs Python on one core at a time (the GIL); a limit above one core would
# only let gRPC's C threads burst, and a limit below it throttles a replica before the HPA reacts.
PYTHON_CPU_LIMIT_MILLICORES = 1000
# Envoy runs `--concurrency ENVOY_WORKERS` worker threads (not one per node core, which it would
# otherwise read from the node), so its limit is that many cores.
ENVOY_WORKERS = 2
# Section 8: the edge's RSS was 93.3 MiB before 5,000 idle WebSockets and 122.1 MiB after (6.0 KB
# each). The other Python processes load the same runtime; none of them was measured alone.
PYTHON_IDLE_RSS_MIB = 94
WEBSOCKET_IDLE_BYTES = 6_048


@dataclass(frozen=True)
class CpuFigures:
    """What one process costs: CPU milliseconds per second while idle and per turn (or tool call)."""

    idle_ms_per_second: float
    ms_per_turn: float
    source: str  # the docs/benchmarks.md section the figures come from


# Section 18 at 28af35e: "The idle stack" table and the "At 20 in flight" table (CPU ms per turn).
# Section 17 at 39d8fd0: the tool gateway's and the example server's CPU per tool call.
CPU: dict[str, CpuFigures] = {
    "orchestrator": CpuFigures(10.0, 8.0, "benchmarks section 18, 20 in flight"),
    "conversation": CpuFigures(10.0, 3.6, "benchmarks section 18, 20 in flight"),
    "agent-proxy": CpuFigures(6.0, 3.7, "benchmarks section 18, 20 in flight"),
    "token": CpuFigures(12.0, 0.1, "benchmarks section 18, 20 in flight"),
    "metering": CpuFigures(12.0, 2.9, "benchmarks section 18, 20 in flight"),
    "tool-gateway": CpuFigures(10.0, 3.0, "benchmarks section 17, per tool call, quiet machine"),
    "edge": CpuFigures(6.0, 2.2, "benchmarks section 18, 20 in flight"),
    "envoy": CpuFigures(10.0, 2.0, "benchmarks section 18, 20 in flight"),
    "example-tool-server": CpuFigures(0.0, 1.0, "benchmarks section 17, the calculator per call"),
}


@dataclass(frozen=True)
class Sizing:
    cpu_request_millicores: int
    cpu_limit_millicores: int
    memory_request_mib: int
    memory_limit_mib: int

    def resources(self) -> dict[str, dict[str, str]]:
        """The container's `resources` block."""
        return {
            "requests": {"cpu": f"{self.cpu_request_millicores}m", "memory": f"{self.memory_request_mib}Mi"},
            "limits": {"cpu": f"{self.cpu_limit_millicores}m", "memory": f"{self.memory_limit_mib}Mi"},
        }


def cpu_request_millicores(figures: CpuFigures) -> int:
    """Idle CPU plus the design load's, rounded up to a multiple of MIN_CPU_MILLICORES."""
    millicores = figures.idle_ms_per_second + figures.ms_per_turn * DESIGN_TURNS_PER_SECOND
    return max(MIN_CPU_MILLICORES, math.ceil(millicores / MIN_CPU_MILLICORES) * MIN_CPU_MILLICORES)


def _mib(value: float) -> int:
    """Rounded up to a multiple of 32 MiB, so the figures read as sizes rather than measurements."""
    return math.ceil(value / 32) * 32


# Idle WebSockets the edge's memory request holds beside its idle RSS; its limit holds ten times as
# many, after which the kubelet restarts it rather than the node running short.
EDGE_REQUEST_WEBSOCKETS = 20_000
EDGE_LIMIT_WEBSOCKETS = 10 * EDGE_REQUEST_WEBSOCKETS


def sizing(kind: str) -> Sizing:
    """Requests and limits of the workload whose CPU figures are `CPU[kind]`."""
    cpu = cpu_request_millicores(CPU[kind])
    if kind == "envoy":
        # Envoy is C++: its memory is its config and connection buffers, a few tens of MiB.
        return Sizing(cpu, ENVOY_WORKERS * 1000, 64, 256)
    if kind == "edge":
        per_socket_mib = WEBSOCKET_IDLE_BYTES / 2**20
        return Sizing(
            cpu,
            PYTHON_CPU_LIMIT_MILLICORES,
            _mib(PYTHON_IDLE_RSS_MIB + EDGE_REQUEST_WEBSOCKETS * per_socket_mib),
            _mib(PYTHON_IDLE_RSS_MIB + EDGE_LIMIT_WEBSOCKETS * per_socket_mib),
        )
    # Headroom over the idle RSS for requests in flight, caches and the Kafka producer's buffers.
    return Sizing(
        cpu, PYTHON_CPU_LIMIT_MILLICORES, _mib(PYTHON_IDLE_RSS_MIB * 1.5), _mib(PYTHON_IDLE_RSS_MIB * 5)
    )
