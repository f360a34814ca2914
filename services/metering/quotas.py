"""Real-time quotas: Reserve before work, Commit its actual usage, Release it if it did not happen.

A reservation holds quantity against the month's allowance in one atomic Redis script, so
concurrent turns can never together pass a hard limit; a hold neither committed nor released
expires and gives its quantity back. Commit records the usage in Postgres first (de-duplicated by
event id), then settles the hold and counts the new usage in one script.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import principal_pb2
from macp.metering.v1 import metering_service_pb2 as pb

from services.metering.events import MalformedEvent, StagedRow, UsageEvent, row_of_event
from services.metering.meters import METER_LABELS, METER_OF_TYPE, meter_name
from services.metering.quota_counters import CounterState, QuotaCounters, delta_args
from services.metering.store.ingest import RecordedBatch, record_batch
from services.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.runtime.periods import billing_month, month_end, month_label, month_start, parse_month
from services.runtime.protos import timestamp

Clock = Callable[[], datetime]
Reply = list[bytes]
# Told of every refused hold, by tier and meter name (`free`, `agent_turns`): the metrics' hook.
OnRefused = Callable[[str, str], None]
REBUILD_ATTEMPTS = 3
# The names refusals are counted under: the enums' names without their prefixes.
TIER_NAMES: dict[int, str] = {
    principal_pb2.TIER_UNSPECIFIED: "unspecified",
    principal_pb2.TIER_FREE: "free",
    principal_pb2.TIER_PRO: "pro",
    principal_pb2.TIER_ENTERPRISE: "enterprise",
}
METER_NAMES: dict[int, str] = {
    meter: meter_name(meter).removeprefix("METER_").lower() for meter in METER_LABELS
}


def utc_now() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=16)
def _period(month: date) -> tuple[Timestamp, Timestamp]:
    """The month's bounds as Timestamps, built once a month rather than on every quota answer.
    Callers copy them into their messages (a message field copies on assignment) and never change
    them."""
    return timestamp(month_start(month)), timestamp(month_end(month))


def _status(meter: int, month: date, state: CounterState) -> pb.QuotaStatus:
    used, reserved = math.ceil(state.used), math.ceil(state.reserved)
    included = int(state.limit) if state.limited else 0
    start, end = _period(month)
    return pb.QuotaStatus(
        meter=meter,  # type: ignore[arg-type]
        tier=state.tier,  # type: ignore[arg-type]
        included_quantity=included,
        used_quantity=used,
        reserved_quantity=reserved,
        remaining_quantity=max(included - math.ceil(state.used + state.reserved), 0),
        hard_limit=state.hard,
        period_start_time=start,
        period_end_time=end,
    )


def _past_allowance(state: CounterState, quantity: float) -> bool:
    return state.limited and state.used + state.reserved + quantity > state.limit


def _rows(tenant_id: str, usage: Sequence[UsageEvent], field: str) -> list[StagedRow]:
    """The rows of a hold's usage events; InvalidArgument naming `field[i]` at the first that is
    not the hold's tenant's or breaks a storage rule protovalidate does not know."""
    rows: list[StagedRow] = []
    for index, event in enumerate(usage):
        if event.tenant_id != tenant_id:
            raise InvalidArgument(f"{field}[{index}].tenant_id: must be the reservation's tenant {tenant_id}")
        try:
            rows.append(row_of_event(event))
        except MalformedEvent as exc:
            raise InvalidArgument(f"{field}[{index}]: {exc}") from None
    return rows


def _refusal(meter: int, month: date, state: CounterState) -> ResourceExhausted:
    description, unit = METER_LABELS[meter]
    return ResourceExhausted(
        f"QUOTA_EXCEEDED: the free tier limit of {int(state.limit)} {unit} ({description.lower()}) per "
        f"month is reached ({math.ceil(state.used)} used, {math.ceil(state.reserved)} reserved); "
        f"it resets at {month_end(month).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )


class Quotas:
    def __init__(self, counters: QuotaCounters, default_ttl_seconds: int, clock: Clock = utc_now) -> None:
        self._counters = counters
        self._default_ttl_ms = default_ttl_seconds * 1000
        self._clock = clock
        self.on_refused: OnRefused = lambda tier, meter: None

    async def _run(self, tenant_id: str, month: date, call: Callable[[], Awaitable[bytes]]) -> Reply:
        """`call`'s reply as its words (see quota_scripts.py), after rebuilding the month's counters
        from Postgres if Redis lost them."""
        for _ in range(REBUILD_ATTEMPTS):
            reply = (await call()).split(b" ")
            if reply[0] != b"rebuild":
                return reply
            # A hold names its own month, which a commit just after midnight UTC needs rebuilt.
            await self._counters.rebuild(
                tenant_id, parse_month(reply[1].decode(), "month", self._clock()) if len(reply) > 1 else month
            )
        raise Unavailable(
            f"quota counters of {tenant_id} for {month_label(month)} could not be rebuilt; retry"
        )

    async def check(self, tenant_id: str, meter: int, quantity: int) -> pb.CheckQuotaResponse:
        month = billing_month(self._clock())
        keys = self._counters.keys(tenant_id)
        reply = await self._run(
            tenant_id,
            month,
            lambda: self._counters.status_script(
                keys=[keys.quota(month), keys.holds(month)], args=[keys.hold_prefix, str(meter)]
            ),
        )
        state = CounterState.parse(reply[1:6])
        past = _past_allowance(state, quantity)
        response = pb.CheckQuotaResponse(
            allowed=not (past and state.hard),
            overage=past and not state.hard,
            quota=_status(meter, month, state),
        )
        if past and state.hard:
            response.reason = _refusal(meter, month, state).message
        return response

    def _ttl_ms(self, request: pb.ReserveRequest) -> int:
        return request.ttl.ToMilliseconds() if request.HasField("ttl") else self._default_ttl_ms

    def _held(
        self, request: pb.ReserveRequest, month: date, words: Reply
    ) -> pb.ReserveResponse | ResourceExhausted:
        """One hold's answer from its eight words (RESERVE, RESERVE_MANY): the hold, or its refusal
        (counted in the metrics here)."""
        outcome, expire_ms = words[0], words[2]
        state = CounterState.parse(words[3:8])
        if outcome == b"refused":
            self.on_refused(TIER_NAMES.get(state.tier, "unspecified"), METER_NAMES[request.meter])
            return _refusal(request.meter, month, state)
        response = pb.ReserveResponse(
            reservation_id=request.reservation_id,
            overage=state.limited and not state.hard and state.used + state.reserved > state.limit,
            quota=_status(request.meter, month, state),
        )
        response.expire_time.FromMilliseconds(int(expire_ms))
        return response

    async def reserve(self, tenant_id: str, request: pb.ReserveRequest) -> pb.ReserveResponse:
        # The hot path of a turn: one script call, and as little Python around it as will do.
        month = billing_month(self._clock())
        keys = self._counters.keys(tenant_id)
        script_keys = [keys.quota(month), keys.holds(month), keys.hold(request.reservation_id)]
        script_args = [request.meter, request.quantity, self._ttl_ms(request)]
        reply = await self._run(
            tenant_id, month, lambda: self._counters.reserve_script(keys=script_keys, args=script_args)
        )
        held = self._held(request, month, reply)
        if isinstance(held, ResourceExhausted):
            raise held
        return held

    async def reserve_many(
        self, tenant_id: str, requests: Sequence[pb.ReserveRequest]
    ) -> list[pb.ReserveResponse | ResourceExhausted]:
        """Several holds of one tenant in one script call, each answered as `reserve` would answer
        it alone (a refusal as the error `reserve` would raise), in order."""
        month = billing_month(self._clock())
        keys = self._counters.keys(tenant_id)
        script_keys = [keys.quota(month), keys.holds(month)]
        script_args: list[int] = []
        for request in requests:
            script_keys.append(keys.hold(request.reservation_id))
            script_args += [request.meter, request.quantity, self._ttl_ms(request)]
        reply = await self._run(
            tenant_id, month, lambda: self._counters.reserve_many_script(keys=script_keys, args=script_args)
        )
        return [
            self._held(request, month, reply[index * 8 : index * 8 + 8])
            for index, request in enumerate(requests)
        ]

    async def commit(
        self, tenant_id: str, reservation_id: str, usage: Sequence[UsageEvent]
    ) -> pb.CommitResponse:
        rows = _rows(tenant_id, usage, "usage")
        batch = await record_batch(self._counters.pool, rows)
        keys = self._counters.keys(tenant_id)
        month = billing_month(self._clock())
        meter = METER_OF_TYPE[usage[0].type]
        reply = await self._run(
            tenant_id,
            month,
            lambda: self._counters.commit_script(
                keys=[keys.hold(reservation_id)],
                args=[
                    keys.quota_prefix,
                    keys.holds_prefix,
                    keys.hold_prefix,
                    keys.applied_prefix,
                    month_label(month),
                    meter,
                    str(batch.batch_id),
                    *delta_args(batch.deltas),
                ],
            ),
        )
        self._counted(tenant_id, batch, reply[7:])
        return pb.CommitResponse(
            recorded_count=batch.recorded,
            already_committed=reply[1] == b"committed",
            quota=await self._settled_status(tenant_id, meter, month, reply[2:7]),
        )

    async def commit_many(
        self, tenant_id: str, holds: Sequence[pb.CommitRequest]
    ) -> list[pb.CommitResponse | InvalidArgument]:
        """Several holds of one tenant settled with their usage, each answered as `commit` would
        answer it alone (its invalid usage as the error `commit` would raise, naming
        `holds[i].usage[j]`), in order: every valid hold's events recorded in one statement, and
        every valid hold settled and that batch counted in one script call."""
        outcomes: list[pb.CommitResponse | InvalidArgument] = []
        valid: list[pb.CommitRequest] = []
        rows: list[StagedRow] = []
        for index, hold in enumerate(holds):
            try:
                rows += _rows(tenant_id, hold.usage, f"holds[{index}].usage")
            except InvalidArgument as invalid:
                outcomes.append(invalid)
                continue
            valid.append(hold)
            outcomes.append(pb.CommitResponse())
        if not valid:
            return outcomes
        batch = await record_batch(self._counters.pool, rows, ids=True)
        keys = self._counters.keys(tenant_id)
        month = billing_month(self._clock())
        meters = [METER_OF_TYPE[hold.usage[0].type] for hold in valid]
        reply = await self._run(
            tenant_id,
            month,
            lambda: self._counters.commit_many_script(
                keys=[keys.hold(hold.reservation_id) for hold in valid],
                args=[
                    keys.quota_prefix,
                    keys.holds_prefix,
                    keys.hold_prefix,
                    keys.applied_prefix,
                    month_label(month),
                    str(batch.batch_id),
                    *meters,
                    *delta_args(batch.deltas),
                ],
            ),
        )
        self._counted(tenant_id, batch, reply[1 + 6 * len(valid) :])
        # Each recorded event is counted for the first hold that carries it, as if the holds
        # were committed one after the other.
        unclaimed = set(batch.inserted)
        answers = iter(range(len(valid)))
        for response in outcomes:
            if not isinstance(response, pb.CommitResponse):
                continue
            at = next(answers)
            hold, words = valid[at], reply[1 + 6 * at : 7 + 6 * at]
            ids = {event.event_id.lower() for event in hold.usage}
            response.recorded_count = len(ids & unclaimed)
            unclaimed -= ids
            response.already_committed = words[0] == b"committed"
            response.quota.CopyFrom(await self._settled_status(tenant_id, meters[at], month, words[1:6]))
        return outcomes

    def _counted(self, tenant_id: str, batch: RecordedBatch, months: Reply) -> None:
        """Hand the batch's deltas that the script counted (`months`) to be deleted."""
        counted = {label.decode() for label in months}
        self._counters.counted.add(
            batch.batch_id,
            [(tenant_id, d.billing_month) for d in batch.deltas if month_label(d.billing_month) in counted],
        )

    async def _settled_status(self, tenant_id: str, meter: int, month: date, words: Reply) -> pb.QuotaStatus:
        """The status a commit script answered, or STATUS's if this month's counters are not built
        (the script answers five '-', and STATUS builds them)."""
        if words[0] == b"-":
            return (await self.check(tenant_id, meter, 1)).quota
        return _status(meter, month, CounterState.parse(words))

    async def release(self, tenant_id: str, reservation_id: str) -> bool:
        keys = self._counters.keys(tenant_id)
        released = await self._counters.release_script(
            keys=[keys.hold(reservation_id)], args=[keys.quota_prefix, keys.holds_prefix]
        )
        return bool(released)

    async def close(self) -> None:
        """Finish what Commits left to do later (see CountedDeltas)."""
        await self._counters.counted.close()

    async def plan_changed(self, tenant_id: str) -> None:
        """New limits apply from the next answer: this month's counters are rebuilt with them."""
        await self._counters.invalidate(tenant_id, billing_month(self._clock()))
