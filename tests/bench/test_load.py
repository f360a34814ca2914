"""The open-loop driver keeps its schedule when the path is slow and counts the queueing it causes
(no coordinated omission), and it stays bounded when the path stalls."""

from __future__ import annotations

import asyncio
import time

from bench.cpu import CLIENT, CpuMeter
from bench.load import drive_open


async def test_calls_keep_their_schedule_and_count_the_queue_behind_a_slow_server() -> None:
    # One call at a time, 20 ms each: at most 50/s served, 100/s scheduled. Each call alone takes
    # 20 ms; a closed loop would say so. Scheduled at 100/s for 0.3 s, the 30th call waits behind
    # the 29 before it (29 x 20 ms = 0.58 s) and is due 0.29 s after the first.
    server = asyncio.Lock()

    async def serial(index: int) -> None:
        async with server:
            await asyncio.sleep(0.02)

    result = await drive_open(serial, rate=100, seconds=0.3, warmup_seconds=0, meter=CpuMeter({}))

    assert result.scheduled == result.started == result.load.count == 30
    assert result.load.errors == 0
    assert 80 <= result.start_rate <= 125  # started on schedule, not held back by the slow calls
    assert result.load.max_ms > 250  # about 0.6 s - 0.29 s = 310 ms of which the call is 20 ms
    assert result.load.p50_ms > 100
    assert CLIENT in result.load.cpu


async def test_a_busy_client_loop_counts_against_the_calls_it_starts_late() -> None:
    # Each call holds the event loop for 5 ms (a client out of CPU): 40 calls due over 0.1 s take
    # 0.2 s, so the last ones start about 0.1 s late. Timed from when they really began, they would
    # all be 5 ms.
    async def hog(index: int) -> None:
        busy_until = time.perf_counter() + 0.005
        while time.perf_counter() < busy_until:
            pass

    result = await drive_open(hog, rate=400, seconds=0.1, warmup_seconds=0, meter=CpuMeter({}))

    assert result.load.count == 40
    assert result.start_lag_p99_ms > 50
    assert result.load.max_ms > 80
    assert result.from_start_p99_ms < 40  # timed from their real start, the calls look fine


async def test_a_stalled_path_is_shed_at_the_cap_and_cancelled_at_the_deadline() -> None:
    stalled = asyncio.Event()

    async def never(index: int) -> None:
        await stalled.wait()

    result = await drive_open(
        never,
        rate=200,
        seconds=0.1,
        warmup_seconds=0,
        meter=CpuMeter({}),
        max_in_flight=5,
        grace_seconds=0.2,
    )

    assert (result.scheduled, result.started, result.load.count) == (20, 5, 0)
    assert result.load.errors == 20  # 15 never started, 5 cancelled unfinished
    assert result.load.first_error == "15 calls not started (in-flight cap, errors or schedule overrun)"
