"""Fair admission to a bounded number of concurrent upstream calls.

When every slot is busy, waiting calls queue by tier and by tenant. Freed slots go to the tiers
by weight (enterprise 6, pro 3, free 1, in a smooth weighted round-robin: E P E E P E F E P E), a
tier with nobody waiting giving its turn to the next; within a tier the tenants take turns
(round-robin), so one tenant's burst waits behind its own calls, not in front of everyone else's.
Weights rather than strict priority: under sustained enterprise load a free call still gets one
slot in ten instead of waiting forever, while the paying tiers keep most of the capacity. Past
`limit` waiting calls the queue refuses (RESOURCE_EXHAUSTED) rather than letting latency grow
without bound; past `tenant_limit` waiting calls of one tenant, that tenant alone is refused, so a
burst from one tenant cannot fill the queue and have every other tenant's calls refused.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from macp.common.v1 import principal_pb2

from services.runtime.errors import ResourceExhausted

# The tiers by rank, and each one's share of contended slots; an unknown tier waits with free.
TIER_ORDER = (principal_pb2.TIER_ENTERPRISE, principal_pb2.TIER_PRO, principal_pb2.TIER_FREE)
TIER_WEIGHTS = (6, 3, 1)


def weighted_schedule(weights: tuple[int, ...]) -> tuple[int, ...]:
    """The ranks in smooth weighted round-robin order (nginx's): each appears `weight` times per
    cycle, spread out rather than in runs."""
    current = [0] * len(weights)
    total = sum(weights)
    order = []
    for _ in range(total):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        chosen = max(range(len(weights)), key=lambda rank: current[rank])
        current[chosen] -= total
        order.append(chosen)
    return tuple(order)


SCHEDULE = weighted_schedule(TIER_WEIGHTS)


def _tier_rank(tier: int) -> int:
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER) - 1


class FairQueue:
    def __init__(
        self,
        slots: int,
        limit: int,
        on_depth: Callable[[int], None] = lambda depth: None,
        tenant_limit: int | None = None,
    ) -> None:
        self.slots = slots
        self.limit = limit
        self.tenant_limit = limit if tenant_limit is None else tenant_limit
        self.busy = 0
        self.on_depth = on_depth
        # Per tier rank: tenant -> its waiters, in the order the tenants take turns.
        self._waiting: list[OrderedDict[str, deque[asyncio.Future[None]]]] = [
            OrderedDict() for _ in TIER_ORDER
        ]
        self.depth = 0
        self._cursor = 0  # where in SCHEDULE the next freed slot starts looking

    def _set_depth(self, change: int) -> None:
        self.depth += change
        self.on_depth(self.depth)

    @asynccontextmanager
    async def slot(self, tier: int, tenant: str) -> AsyncIterator[None]:
        """Hold one upstream slot for the block; waits for its turn when all are busy."""
        if self.busy < self.slots and self.depth == 0:
            self.busy += 1
        else:
            await self._wait(_tier_rank(tier), tenant)
        try:
            yield
        finally:
            self._release()

    async def _wait(self, rank: int, tenant: str) -> None:
        if self.depth >= self.limit:
            raise ResourceExhausted(
                f"the agent proxy has {self.depth} calls waiting for a provider (the limit); retry shortly"
            )
        waiters = self._waiting[rank].setdefault(tenant, deque())
        if len(waiters) >= self.tenant_limit:
            raise ResourceExhausted(
                f"this tenant has {len(waiters)} calls waiting for a provider (its limit); retry shortly"
            )
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(granted)
        self._set_depth(+1)
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self._release()  # the slot was handed over as we were cancelled: pass it on
            else:
                self._forget(rank, tenant, granted)
            raise

    def _forget(self, rank: int, tenant: str, granted: asyncio.Future[None]) -> None:
        waiters = self._waiting[rank].get(tenant)
        if waiters is not None and granted in waiters:
            waiters.remove(granted)
            if not waiters:
                del self._waiting[rank][tenant]
            self._set_depth(-1)

    def _release(self) -> None:
        """Hand the freed slot to the next waiter in turn, or free it."""
        for step in range(len(SCHEDULE)):
            position = (self._cursor + step) % len(SCHEDULE)
            tenants = self._waiting[SCHEDULE[position]]
            while tenants:
                tenant, waiters = next(iter(tenants.items()))
                granted = waiters.popleft()
                # The tenant goes to the back of its tier's rotation (or leaves it, with no one waiting).
                del tenants[tenant]
                if waiters:
                    tenants[tenant] = waiters
                self._set_depth(-1)
                if not granted.done():
                    granted.set_result(None)  # the slot passes straight to it: `busy` is unchanged
                    self._cursor = position + 1
                    return
        self.busy -= 1
