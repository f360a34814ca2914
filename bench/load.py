"""A bounded closed-loop load: `concurrency` workers issue calls back to back until `requests` calls
have been issued or `max_seconds` have passed, whichever comes first.

Every call is timed on its own (perf_counter around the await); a warm-up pass at the same
concurrency, not recorded, opens connections and fills pools and caches first.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bench.cpu import CpuMeter
from bench.stats import percentile

Call = Callable[[int], Awaitable[None]]  # the argument is the call's index; raising means it failed
MAX_ERRORS = 50  # a path that fails this often is broken, not slow: stop hammering it


@dataclass(frozen=True)
class LoadResult:
    latencies: tuple[float, ...]  # seconds, successful calls only, sorted
    errors: int
    first_error: str | None
    elapsed: float
    cpu: dict[str, float]  # CPU seconds per process during the recorded pass

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    @classmethod
    def merge(cls, parts: Sequence[LoadResult]) -> LoadResult:
        """One result from several passes over the same path."""
        cpu: dict[str, float] = {}
        for part in parts:
            for name, seconds in part.cpu.items():
                cpu[name] = cpu.get(name, 0.0) + seconds
        return cls(
            latencies=tuple(sorted(latency for part in parts for latency in part.latencies)),
            errors=sum(part.errors for part in parts),
            first_error=next((part.first_error for part in parts if part.first_error), None),
            elapsed=sum(part.elapsed for part in parts),
            cpu=cpu,
        )

    def cpu_us_per_call(self, name: str) -> float:
        calls = self.count + self.errors
        return self.cpu.get(name, 0.0) / calls * 1e6 if calls else 0.0


async def _pass(
    call: Call, concurrency: int, requests: int, max_seconds: float
) -> tuple[list[float], list[BaseException], float]:
    issued = itertools.count()
    latencies: list[float] = []
    errors: list[BaseException] = []
    began = time.perf_counter()
    deadline = began + max_seconds

    async def worker() -> None:
        while time.perf_counter() < deadline and len(errors) < MAX_ERRORS:
            index = next(issued)
            if index >= requests:
                return
            start = time.perf_counter()
            try:
                await call(index)
            except Exception as exc:
                errors.append(exc)
            else:
                latencies.append(time.perf_counter() - start)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return latencies, errors, time.perf_counter() - began


async def drive(
    call: Call, *, concurrency: int, requests: int, max_seconds: float, warmup: int, meter: CpuMeter
) -> LoadResult:
    """Warm up, then run the recorded pass and read every process's CPU around it."""
    await _pass(call, concurrency, warmup, max_seconds)
    before = meter.read()
    latencies, errors, elapsed = await _pass(call, concurrency, requests, max_seconds)
    after = meter.read()
    return LoadResult(
        latencies=tuple(sorted(latencies)),
        errors=len(errors),
        first_error=f"{type(errors[0]).__name__}: {errors[0]}"[:300] if errors else None,
        elapsed=elapsed,
        cpu=CpuMeter.spent(before, after),
    )
