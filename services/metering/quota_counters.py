"""The Redis side of quotas: counters per tenant, billing month and meter, built from Postgres.

`used` counters grow by the quota deltas of each recorded batch (written to Postgres with the
batch, applied here by an idempotent script, then deleted); `reserved` counters hold the open
reservations. A quota hash that is missing (a Redis restart or flush, a new month, a plan change)
is rebuilt from the Postgres rollups, in one snapshot with the batches still waiting to be
applied, before any quota answer is given from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

import asyncpg
import redis.asyncio as aioredis

from services.metering import quota_scripts
from services.metering.meters import METER_OF_TYPE, quantity
from services.metering.plans import Plans, allowances_of
from services.metering.store.ingest import QuotaDelta
from services.runtime.periods import month_end, month_label

log = logging.getLogger("macp.metering.quotas")

# A month's quota hash outlives the month by this long, so late events still find it.
QUOTA_EXPIRE_AFTER_MONTH_SECONDS = 40 * 86400
# Deltas of counters Redis does not hold are kept this long, then dropped (see `sweep`).
UNBUILT_DELTA_SECONDS = 60.0
# Rows of counted deltas wait this long to be deleted together with those counted meanwhile.
FORGET_LINGER_SECONDS = 0.02
FORGET_MAX_ROWS = 5_000


@dataclass(frozen=True)
class CounterState:
    """One meter's counters in one month: floats as Redis holds them; limit -1 means none."""

    used: float
    reserved: float
    limit: float
    hard: bool
    tier: int  # the plan's tier, kept with the counters so that quota answers read Redis only

    @classmethod
    def parse(cls, values: Sequence[bytes]) -> CounterState:
        used, reserved, limit, hard, tier = values
        return cls(float(used), float(reserved), float(limit), hard == b"1", int(tier))

    @property
    def limited(self) -> bool:
        return self.limit >= 0


class QuotaKeys:
    """The Redis keys of one tenant (see quota_scripts.py)."""

    def __init__(self, prefix: str, tenant_id: str) -> None:
        base = f"{prefix}metering:{{{tenant_id}}}:"
        self.quota_prefix = base + "quota:"
        self.holds_prefix = base + "holds:"
        self.hold_prefix = base + "hold:"
        self.applied_prefix = base + "applied:"

    def quota(self, month: date) -> str:
        return self.quota_prefix + month_label(month)

    def holds(self, month: date) -> str:
        return self.holds_prefix + month_label(month)

    def hold(self, reservation_id: str) -> str:
        return self.hold_prefix + reservation_id


# Every quota answer needs its tenant's keys; building them is a few string joins, which a busy
# tenant would repeat thousands of times a second.
_keys = functools.lru_cache(maxsize=4096)(QuotaKeys)


def delta_args(deltas: Iterable[QuotaDelta]) -> list[str]:
    args: list[str] = []
    for d in deltas:
        args += [month_label(d.billing_month), str(d.meter), repr(d.quantity)]
    return args


class CountedDeltas:
    """Delta rows whose counting is done, deleted a few milliseconds later in one statement with
    every other batch counted meanwhile (a Commit counts its own batch: one DELETE per Commit
    would be a Postgres round trip and a WAL flush each). A row that outlives its counting is
    harmless: counting is idempotent (the `applied` key, kept a day), a rebuild marks its batch as
    applied since the rollups hold it already, and if this process dies first the sweep deletes
    it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending: list[tuple[uuid.UUID, str, date]] = []
        self._flusher: asyncio.Task[None] | None = None

    def add(self, batch_id: uuid.UUID, counted: Sequence[tuple[str, date]]) -> None:
        self._pending += [(batch_id, tenant, month) for tenant, month in counted]
        if self._pending and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush_soon(), name="metering-counted-deltas")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FORGET_LINGER_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        while self._pending:
            rows, self._pending = self._pending[:FORGET_MAX_ROWS], self._pending[FORGET_MAX_ROWS:]
            try:
                await self._pool.execute(
                    """
                    DELETE FROM metering_quota_deltas d
                    USING unnest($1::uuid[], $2::text[], $3::date[]) AS c(batch, tenant, month)
                    WHERE d.batch_id = c.batch AND d.tenant_id = c.tenant AND d.billing_month = c.month
                    """,
                    [batch for batch, _, _ in rows],
                    [tenant for _, tenant, _ in rows],
                    [month for _, _, month in rows],
                )
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ) as exc:
                # (InternalClientError: a pooled connection whose server died under it.)
                log.warning("counted quota deltas not deleted; the sweep will", extra={"error": str(exc)})

    async def close(self) -> None:
        """Delete what is pending now (a process's last step)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()


class QuotaCounters:
    def __init__(self, redis: aioredis.Redis, key_prefix: str, pool: asyncpg.Pool, plans: Plans) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self.pool = pool
        self._pool = pool
        self._plans = plans
        self.counted = CountedDeltas(pool)
        self.reserve_script = redis.register_script(quota_scripts.RESERVE)
        self.commit_script = redis.register_script(quota_scripts.COMMIT)
        self.reserve_many_script = redis.register_script(quota_scripts.RESERVE_MANY)
        self.commit_many_script = redis.register_script(quota_scripts.COMMIT_MANY)
        self.release_script = redis.register_script(quota_scripts.RELEASE)
        self.status_script = redis.register_script(quota_scripts.STATUS)
        self._apply = redis.register_script(quota_scripts.APPLY)
        self._rebuild = redis.register_script(quota_scripts.REBUILD)

    def keys(self, tenant_id: str) -> QuotaKeys:
        return _keys(self._prefix, tenant_id)

    async def apply(self, batch_id: uuid.UUID, deltas: Sequence[QuotaDelta]) -> list[tuple[str, date]]:
        """Count a recorded batch's deltas (each tenant's at most once), then drop them from the
        outbox. Returns the (tenant, month) pairs not counted because Redis holds no counters for
        them: their rows stay, for a rebuild racing this batch to find (see `sweep`)."""
        by_tenant: dict[str, list[QuotaDelta]] = {}
        for d in deltas:
            by_tenant.setdefault(d.tenant_id, []).append(d)
        done: list[tuple[str, date]] = []
        unbuilt: list[tuple[str, date]] = []
        replies = await asyncio.gather(
            *(
                self._apply(
                    args=[
                        self.keys(t).quota_prefix,
                        self.keys(t).applied_prefix,
                        str(batch_id),
                        *delta_args(ds),
                    ]
                )
                for t, ds in by_tenant.items()
            )
        )
        for tenant_id, months in zip(by_tenant, replies, strict=True):
            labels = {m.decode() for m in months}
            for d in by_tenant[tenant_id]:
                counted = month_label(d.billing_month) in labels
                (done if counted else unbuilt).append((tenant_id, d.billing_month))
        self.counted.add(batch_id, done)
        return sorted(set(unbuilt))

    async def rebuild(self, tenant_id: str, month: date) -> None:
        """Build the tenant's quota hash for `month` from Postgres (a no-op if another process did)."""
        plan = await self._plans.get(tenant_id)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                """
                SELECT event_type, sum(event_count)::bigint AS event_count,
                       sum(audio_seconds) AS audio_seconds, sum(storage_mb) AS storage_mb
                FROM metering_usage_rollups WHERE tenant_id = $1 AND billing_month = $2
                GROUP BY event_type
                """,
                tenant_id,
                month,
            )
            pending = await conn.fetch(
                """
                SELECT DISTINCT batch_id FROM metering_quota_deltas
                WHERE tenant_id = $1 AND billing_month = $2
                """,
                tenant_id,
                month,
            )
        used: dict[int, float] = {}
        for row in rows:
            meter = METER_OF_TYPE[row["event_type"]]
            used[meter] = used.get(meter, 0.0) + quantity(
                row["event_type"], row["event_count"], row["audio_seconds"], row["storage_mb"]
            )
        allowances = allowances_of(plan)
        meters = sorted(set(used) | set(allowances))
        args: list[str] = []
        for meter in meters:
            allowance = allowances.get(meter)
            limit = str(allowance.included_quantity) if allowance is not None else "-1"
            hard = "1" if allowance is not None and allowance.hard_limit else "0"
            args += [str(meter), repr(used.get(meter, 0.0)), limit, hard]
        keys = self.keys(tenant_id)
        expire = math.ceil(month_end(month).timestamp()) + QUOTA_EXPIRE_AFTER_MONTH_SECONDS
        built = await self._rebuild(
            keys=[keys.quota(month), keys.holds(month)],
            args=[
                keys.hold_prefix,
                keys.applied_prefix,
                month_label(month),
                str(max(expire - int(time.time()), 60)),
                str(plan.tier),
                str(len(meters)),
                *args,
                *(str(row["batch_id"]) for row in pending),
            ],
        )
        if built:
            log.info(
                "quota counters rebuilt from postgres",
                extra={"tenant_id": tenant_id, "month": month_label(month)},
            )

    async def invalidate(self, tenant_id: str, month: date) -> None:
        """Make the next answer rebuild the month from Postgres (after a plan change)."""
        await self._redis.hdel(self.keys(tenant_id).quota(month), "ready")

    async def sweep(self, older_than_seconds: float) -> int:
        """Apply the deltas of batches whose process died before applying them; returns how many
        batches it handled."""
        rows = await self._pool.fetch(
            """
            SELECT batch_id, tenant_id, billing_month, meter, quantity FROM metering_quota_deltas
            WHERE create_time < now() - make_interval(secs => $1) ORDER BY create_time LIMIT 1000
            """,
            older_than_seconds,
        )
        batches: dict[uuid.UUID, list[QuotaDelta]] = {}
        for row in rows:
            batches.setdefault(row["batch_id"], []).append(
                QuotaDelta(row["tenant_id"], row["billing_month"], row["meter"], row["quantity"])
            )
        for batch_id, deltas in batches.items():
            unbuilt = await self.apply(batch_id, deltas)
            if unbuilt:
                # Nobody asked for these counters yet: whenever they are built, the rebuild counts
                # these events from the rollups. Past a minute no rebuild can still be racing the
                # batch (a rebuild takes milliseconds), so the rows have done their job.
                await self._pool.execute(
                    """
                    DELETE FROM metering_quota_deltas d
                    USING unnest($2::text[], $3::date[]) AS u(tenant, month)
                    WHERE d.batch_id = $1 AND d.tenant_id = u.tenant AND d.billing_month = u.month
                      AND d.create_time < now() - make_interval(secs => $4)
                    """,
                    batch_id,
                    [t for t, _ in unbuilt],
                    [m for _, m in unbuilt],
                    UNBUILT_DELTA_SECONDS,
                )
        return len(batches)
