"""The fair queue: bounded slots, tier order, round-robin across tenants, a full queue refused,
cancelled waiters forgotten, and the depth reported (as `pending_agent_requests`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from macp.common.v1 import principal_pb2
from prometheus_client import CollectorRegistry

from services.agent_proxy.fair_queue import SCHEDULE, TIER_WEIGHTS, FairQueue
from services.runtime.errors import ResourceExhausted
from services.runtime.metrics import pending_requests_gauge

FREE, PRO, ENTERPRISE = principal_pb2.TIER_FREE, principal_pb2.TIER_PRO, principal_pb2.TIER_ENTERPRISE


async def _served_order(queue: FairQueue, waiters: Sequence[tuple[int, str]]) -> list[str]:
    """Hold the only slot, queue `waiters` (tier, name) in order, then release and record who runs."""
    order: list[str] = []
    hold = asyncio.Event()

    async def holder() -> None:
        async with queue.slot(PRO, "holder"):
            await hold.wait()

    async def waiter(tier: int, name: str) -> None:
        async with queue.slot(tier, name.split("#")[0]):
            order.append(name)
            await asyncio.sleep(0)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    tasks = []
    for tier, name in waiters:
        tasks.append(asyncio.create_task(waiter(tier, name)))
        await asyncio.sleep(0)
    assert queue.depth == len(waiters)
    hold.set()
    await asyncio.gather(first, *tasks)
    return order


async def test_higher_tiers_first_and_tenants_take_turns() -> None:
    registry = CollectorRegistry()
    gauge = pending_requests_gauge("agent-proxy", registry).labels("agent-proxy")
    depths: list[int] = []

    def report(depth: int) -> None:
        depths.append(depth)
        gauge.set(depth)

    queue = FairQueue(slots=1, limit=100, on_depth=report)
    waiters = [
        (FREE, "f#1"),
        (PRO, "noisy#1"),
        (PRO, "noisy#2"),
        (PRO, "noisy#3"),
        (PRO, "quiet#1"),
        (ENTERPRISE, "big#1"),
        (FREE, "f#2"),
    ]
    order = await _served_order(queue, waiters)
    # Tiers by weight (E P E E P E F ...: a tier with no one waiting passes its turn on); pro
    # tenants alternate, so noisy's burst does not hold quiet back; free is not left for last.
    assert order == ["big#1", "noisy#1", "quiet#1", "f#1", "noisy#2", "noisy#3", "f#2"]
    assert max(depths) == 7
    assert depths[-1] == 0
    assert registry.get_sample_value("pending_agent_requests", {"service": "agent-proxy"}) == 0
    assert queue.busy == 0


def test_the_schedule_gives_each_tier_its_weight_spread_out() -> None:
    assert SCHEDULE == (0, 1, 0, 0, 1, 0, 2, 0, 1, 0)
    assert [SCHEDULE.count(rank) for rank in range(3)] == list(TIER_WEIGHTS)


async def test_sustained_enterprise_load_does_not_starve_free_calls() -> None:
    queue = FairQueue(slots=1, limit=1000)
    waiters = [(ENTERPRISE, f"e{i % 3}#{i}") for i in range(60)] + [(FREE, "f#1"), (FREE, "f#2")]
    order = await _served_order(queue, waiters)
    # Strict priority would serve both free calls last (positions 61 and 62).
    assert order.index("f#1") < 10
    assert order.index("f#2") < 20


async def test_a_full_queue_refuses_and_a_cancelled_waiter_leaves_it() -> None:
    queue = FairQueue(slots=1, limit=2)
    hold = asyncio.Event()

    async def use(tenant: str) -> None:
        async with queue.slot(FREE, tenant):
            await hold.wait()

    running = asyncio.create_task(use("a"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(use(t)) for t in ("b", "c")]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="2 calls waiting"):
        async with queue.slot(FREE, "d"):
            pass
    waiting[0].cancel()
    await asyncio.gather(waiting[0], return_exceptions=True)
    assert queue.depth == 1
    hold.set()
    await asyncio.gather(running, waiting[1])
    assert (queue.busy, queue.depth) == (0, 0)


async def test_one_tenants_burst_is_refused_at_its_own_limit_and_others_still_queue() -> None:
    queue = FairQueue(slots=1, limit=10, tenant_limit=2)
    hold = asyncio.Event()

    async def use(tenant: str) -> None:
        async with queue.slot(FREE, tenant):
            await hold.wait()

    running = asyncio.create_task(use("other"))
    await asyncio.sleep(0)
    burst = [asyncio.create_task(use("greedy")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="this tenant has 2 calls waiting"):
        async with queue.slot(FREE, "greedy"):
            pass
    patient = asyncio.create_task(use("polite"))  # another tenant still gets a place in the queue
    await asyncio.sleep(0)
    assert queue.depth == 3
    hold.set()
    await asyncio.gather(running, *burst, patient)
    assert (queue.busy, queue.depth) == (0, 0)
