"""Bounded loads, closed and open loop.

Closed loop (`drive`): `concurrency` workers issue calls back to back until `requests` calls have
been issued or `max_seconds` have passed, whichever comes first. Every call is timed on its own
(perf_counter around the await). A slow call holds its worker back, so the load eases exactly when
the path is slow: the tail it reports is the tail at a rate the path chose, not at a given one.

Open loop (`drive_open`): call i is started at t0 + i/rate whether or not earlier calls have
finished, each as its own task, and timed from that scheduled instant, not from when it really
began: a call that waited behind a slow one, or behind the client's own busy event loop, counts
the wait (no coordinated omission). This is the load a service meets from many independent callers.

Both run a warm-up pass first, not recorded, that opens connections and fills pools and caches.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

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
    def p999_ms(self) -> float:
        return percentile(self.latencies, 0.999) * 1000

    @property
    def max_ms(self) -> float:
        return self.latencies[-1] * 1000 if self.latencies else math.nan

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


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


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
        first_error=_describe(errors[0]) if errors else None,
        elapsed=elapsed,
        cpu=CpuMeter.spent(before, after),
    )


MAX_IN_FLIGHT = 5_000  # an open loop against a stalled path would otherwise start tasks without end
GRACE_SECONDS = 10.0  # how long calls still in flight when scheduling ends may take to finish


@dataclass(frozen=True)
class OpenLoadResult:
    """An open-loop pass. `load` holds every call's latency from its scheduled instant; its errors
    count failed calls, calls not started (the in-flight cap was reached, or scheduling fell a
    grace period behind) and calls cancelled unfinished at the deadline."""

    load: LoadResult
    target_rate: float
    scheduled: int  # calls due in the recorded pass
    started: int
    start_rate: float  # calls started per second, first start to last
    start_lag_p99_ms: float  # how late the client started its calls: its own event loop's delay
    # p99 timed from when each call really began, lag left out: what a closed loop would see of
    # the same calls, and the share of the tail that is the client's own (timers wake up to 1 ms
    # late: epoll waits in whole milliseconds)
    from_start_p99_ms: float


async def _open_pass(
    call: Call, rate: float, seconds: float, max_in_flight: int, grace_seconds: float
) -> OpenLoadResult:
    interval = 1.0 / rate
    due = math.ceil(seconds * rate)
    latencies: list[float] = []
    from_start: list[float] = []
    failures: list[str] = []
    lags: list[float] = []
    starts: list[float] = []
    in_flight: set[asyncio.Task[None]] = set()

    async def one(index: int, scheduled: float) -> None:
        began = time.perf_counter()
        try:
            await call(index)
        except Exception as exc:
            failures.append(_describe(exc))
        else:
            ended = time.perf_counter()
            latencies.append(ended - scheduled)
            from_start.append(ended - began)

    t0 = time.perf_counter()
    not_started = 0
    for index in range(due):
        scheduled = t0 + index * interval
        now = time.perf_counter()
        if scheduled > now:
            # Sleeps are only as fine as the loop's clock (about 1 ms); a late wake-up starts every
            # overdue call at once, each still timed from its own instant.
            await asyncio.sleep(scheduled - now)
            now = time.perf_counter()
        if len(failures) >= MAX_ERRORS or now - scheduled > grace_seconds or len(in_flight) >= max_in_flight:
            not_started += 1
            continue
        task = asyncio.create_task(one(index, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        lags.append(now - scheduled)
        starts.append(now)
    unfinished = 0
    if in_flight:
        _, pending = await asyncio.wait(set(in_flight), timeout=grace_seconds)
        unfinished = len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.perf_counter() - t0
    # a call never started, or cancelled unfinished, failed as surely as one that raised
    errors = len(failures) + not_started + unfinished
    if not_started:
        failures.append(f"{not_started} calls not started (in-flight cap, errors or schedule overrun)")
    if unfinished:
        failures.append(f"{unfinished} calls unfinished after the {grace_seconds:.0f} s grace period")
    load = LoadResult(
        latencies=tuple(sorted(latencies)),
        errors=errors,
        first_error=failures[0] if failures else None,
        elapsed=elapsed,
        cpu={},
    )
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    return OpenLoadResult(
        load=load,
        target_rate=rate,
        scheduled=due,
        started=len(starts),
        start_rate=(len(starts) - 1) / span if span > 0 else 0.0,
        start_lag_p99_ms=percentile(sorted(lags), 0.99) * 1000,
        from_start_p99_ms=percentile(sorted(from_start), 0.99) * 1000,
    )


async def drive_open(
    call: Call,
    *,
    rate: float,
    seconds: float,
    warmup_seconds: float,
    meter: CpuMeter,
    max_in_flight: int = MAX_IN_FLIGHT,
    grace_seconds: float = GRACE_SECONDS,
) -> OpenLoadResult:
    """Warm up at `rate` for `warmup_seconds`, then run the recorded pass of `seconds` at `rate` and
    read every process's CPU around it (from the first scheduled instant to the last call's end)."""
    if rate <= 0 or seconds <= 0:
        raise ValueError(f"rate and seconds must be positive, got rate={rate} seconds={seconds}")
    if warmup_seconds > 0:
        await _open_pass(call, rate, warmup_seconds, max_in_flight, grace_seconds)
    before = meter.read()
    result = await _open_pass(call, rate, seconds, max_in_flight, grace_seconds)
    after = meter.read()
    return replace(result, load=replace(result.load, cpu=CpuMeter.spent(before, after)))
