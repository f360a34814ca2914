"""A Kafka consumer-group loop that commits offsets only after its sink's effect is durable.

The loop polls a batch, hands it to a `BatchSink` (which makes its effect durable, e.g. in one
Postgres transaction), then commits the batch's offsets. A crash anywhere before the commit means
the batch is delivered again, so a sink must be idempotent (the metering sink de-duplicates by
event id). A sink that raises is retried with the same batch, with back-off, until it succeeds or
the loop is stopped: records are never skipped. Several processes in the same group share the
partitions; when a partition moves, the batch in hand finishes and commits first (the rebalance
listener waits for it), and whatever the new owner receives again is de-duplicated by the sink.

The loop is a pipeline: while batches are being made durable (mostly waiting on the database)
the next is fetched and prepared (decoding and checking records, CPU work), and up to
`max_in_flight` batches are made durable at once (the database works on one while it commits
another). Offsets are still committed in order: a batch commits only once every batch before it
has committed, so no offset ever passes a record whose effect is not durable. A prepared batch
whose partitions were taken away meanwhile loses their records (their new owner reads them from
the committed offset) before it is handled.

Traces: with tracing on, each record of a batch that carries a producer's `traceparent` gets a
CONSUMER span parented on it (services/runtime/tracing.py `consumer_spans`), from the moment its
batch is handed to the sink until its offset is committed. A batch mixes events of many traces;
one span per traced record (rather than one span for the batch with a link per record) keeps each
trace whole, the consumer's step inside the trace that made the event, at the price of a span per
traced record, which only sampled traces carry.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from services.runtime import tracing
from services.runtime.aio import until_set
from services.runtime.metrics import ConsumerMetrics

log = logging.getLogger("macp.consumer")

T = TypeVar("T")
P = TypeVar("P")
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
RETRY_MAX_SECONDS = 5.0
# A consumer stopped before its group assigned it partitions gives its close this long.
UNJOINED_CLOSE_SECONDS = 1.0
RATE_WINDOW_SECONDS = 1.0


@dataclass(frozen=True)
class ConsumerSettings:
    """bootstrap_servers: `host:port[,...]`; group_id: the consumer group the processes share;
    max_batch: the most records one batch holds; poll_timeout_ms: how long a poll waits for records;
    linger_ms: how long a batch keeps filling after its first record (a transaction per handful of
    records would spend its time on round trips, not on records);
    max_in_flight: how many batches are made durable at the same time (their sink must allow it);
    session_timeout_ms / heartbeat_interval_ms: how soon the group notices a dead member."""

    bootstrap_servers: str
    topic: str
    group_id: str
    max_batch: int = 5000
    poll_timeout_ms: int = 200
    linger_ms: int = 100
    max_in_flight: int = 1
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000


class BatchSink(Protocol[P]):
    """Where a batch goes, in two steps. `prepare` turns records into what `handle` needs without
    any effect (it runs while the previous batch is still being handled, so it should yield to the
    event loop now and then); `handle` makes that effect durable and returns the number of records
    per outcome (for the metrics). `handle` must be idempotent, as a batch is delivered again after
    any crash before its commit, and is retried with the same prepared value after an error.
    `assigned` runs before the first batch from newly assigned partitions, so a sink can finish
    what a crashed predecessor left half-done there."""

    async def prepare(self, records: Sequence[Record]) -> P: ...

    async def handle(self, prepared: P) -> Mapping[str, int]: ...

    async def assigned(self, partitions: set[TopicPartition]) -> None: ...


class _WaitForBatches(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets the batches in hand finish and commit before their partitions are taken away."""

    def __init__(self, in_flight: set[asyncio.Task[None]]) -> None:
        self._in_flight = in_flight

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass


class ConsumerLoop(Generic[P]):
    """Run with `async with running(...)`; `stop()` ends the loop after the batch in hand."""

    def __init__(self, settings: ConsumerSettings, sink: BatchSink[P], metrics: ConsumerMetrics) -> None:
        self._settings = settings
        self._sink = sink
        self._metrics = metrics
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._known: set[TopicPartition] = set()
        self._window_start = time.monotonic()
        self._window_records = 0

    def _consumer(self) -> AIOKafkaConsumer:
        s = self._settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_records=s.max_batch,
        )
        consumer.subscribe([s.topic], listener=_WaitForBatches(self._in_flight))
        return consumer

    async def run(self) -> None:
        """Consume until `stop()`; a broker that goes away is waited for, never a reason to exit."""
        delay = 0.2
        while not self._stopping.is_set():
            consumer = self._consumer()
            joined = False
            try:
                joined = await self._joined(consumer)
                if not joined:
                    return
                delay = 0.2
                await self._consume(consumer)
            except KafkaError as exc:
                log.warning("consumer lost the broker; reconnecting", extra={"error": str(exc)})
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            finally:
                self._known = set()
                await self._close(consumer, joined)

    def stop(self) -> None:
        self._stopping.set()

    async def _joined(self, consumer: AIOKafkaConsumer) -> bool:
        """Start `consumer`, which waits until the group assigns it partitions, unless the loop is
        stopped first. A broker can hold a join for many seconds (waiting for the members it still
        remembers); a stop meanwhile abandons it: nothing was fetched, so nothing is lost."""
        starting = await until_set(consumer.start(), self._stopping)
        if starting.cancelled():
            return False
        starting.result()  # raises what the start raised (a broker away: run() retries)
        return True

    async def _close(self, consumer: AIOKafkaConsumer, joined: bool) -> None:
        """Leave the group. A consumer that never joined would first wait out the join still in
        flight (aiokafka finishes it before leaving), so its close is bounded."""
        try:
            if joined:
                await consumer.stop()
            else:
                await asyncio.wait_for(consumer.stop(), UNJOINED_CLOSE_SECONDS)
        except KafkaError as exc:
            log.info("consumer closed without leaving its group cleanly", extra={"error": str(exc)})
        except TimeoutError:
            # aiokafka has no public way to drop a join in flight: the stop above was cut short
            # before it closed the fetcher and the connections, so they are closed here (the
            # broker then forgets the member with its session).
            log.info("consumer stopped while its group join was still held by the broker")
            with contextlib.suppress(KafkaError):
                if consumer._fetcher is not None:
                    await consumer._fetcher.close()
                await consumer._client.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        in_order: collections.deque[asyncio.Task[None]] = collections.deque()  # oldest first
        try:
            while not self._stopping.is_set():
                batches = await self._fill(consumer)
                records = [record for partition in batches.values() for record in partition]
                prepared = await self._sink.prepare(records) if records else None
                while in_order and (in_order[0].done() or len(in_order) >= self._settings.max_in_flight):
                    await in_order.popleft()  # raises what the batch raised (the loop stopping)
                await self._handle_assignment(consumer)
                if prepared is None:
                    await self._report_lag(consumer)
                    continue
                before = in_order[-1] if in_order else None
                task = asyncio.create_task(self._settle(consumer, batches, prepared, before))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                in_order.append(task)
        finally:
            # The loop is ending (stopped, or by the exception on its way out): the batches in hand
            # finish first; what they raise (only ever because the loop is stopping) changes nothing,
            # since a batch that did not commit is simply delivered again.
            for task in in_order:
                with contextlib.suppress(Exception):
                    await task

    async def _settle(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[Record]],
        prepared: P,
        before: asyncio.Task[None] | None,
    ) -> None:
        """Make one prepared batch durable, then commit its offsets once `before` (the batch ahead
        of it) has committed its own; if `before` failed, nothing of this one is committed."""
        owned = {tp: records for tp, records in batches.items() if tp in self._known}
        if len(owned) < len(batches):
            # A rebalance took partitions away since the batch was fetched: their records are
            # left to the new owner, and nothing is committed for them.
            records = [record for partition in owned.values() for record in partition]
            prepared = await self._sink.prepare(records) if records else prepared
            if not records:
                owned = {}
        started = time.monotonic()
        spans = tracing.consumer_spans(self._settings.topic, (r for rs in owned.values() for r in rs))
        try:
            if owned:
                await self._handle(prepared)
            if before is not None:
                await before
            if owned:
                await self._commit(consumer, owned)
        except BaseException as exc:
            tracing.end_spans(spans, exc)
            raise
        tracing.end_spans(spans)
        if owned:
            self._metrics.observe_batch(self._settings.topic, time.monotonic() - started)
            self._count_rate(sum(len(records) for records in owned.values()))
            await self._report_lag(consumer)

    async def _fill(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Record]]:
        """One batch: the first poll's records, topped up until `max_batch` or `linger_ms`."""
        s = self._settings
        batches: dict[TopicPartition, list[Record]] = await consumer.getmany(
            timeout_ms=s.poll_timeout_ms, max_records=s.max_batch
        )
        count = sum(len(records) for records in batches.values())
        deadline = time.monotonic() + s.linger_ms / 1000
        while 0 < count < s.max_batch and (left := deadline - time.monotonic()) > 0:
            more = await consumer.getmany(
                timeout_ms=max(int(left * 1000), 1), max_records=s.max_batch - count
            )
            for tp, records in more.items():
                batches.setdefault(tp, []).extend(records)
                count += len(records)
        return batches

    async def _handle_assignment(self, consumer: AIOKafkaConsumer) -> None:
        assignment = set(consumer.assignment())
        new = assignment - self._known
        if new:
            await self._retrying("preparing assigned partitions", lambda: self._sink.assigned(new))
        self._known = assignment

    async def _handle(self, prepared: P) -> None:
        outcomes = await self._retrying("handling a batch", lambda: self._sink.handle(prepared))
        for outcome, count in outcomes.items():
            self._metrics.count(self._settings.topic, outcome, count)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = 0.2
        while True:
            try:
                return await attempt()
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                log.warning(f"consumer failed {what}; retrying", extra={"error": str(exc)}, exc_info=exc)
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _commit(
        self, consumer: AIOKafkaConsumer, batches: Mapping[TopicPartition, list[Record]]
    ) -> None:
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, "") for tp, records in batches.items() if records
        }
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved on: their new owner receives these records again, and the sink
            # de-duplicates them.
            log.warning("offset commit refused after a rebalance", extra={"error": str(exc)})

    def _count_rate(self, records: int) -> None:
        self._window_records += records
        elapsed = time.monotonic() - self._window_start
        if elapsed >= RATE_WINDOW_SECONDS:
            self._metrics.set_rate(self._settings.topic, self._window_records / elapsed)
            self._window_start, self._window_records = time.monotonic(), 0

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)  # as of the last fetch; None before the first one
            if highwater is None:
                continue
            position = await consumer.position(tp)
            self._metrics.set_lag(tp.topic, tp.partition, max(highwater - position, 0))


@contextlib.asynccontextmanager
async def running(loop: ConsumerLoop[P]) -> AsyncIterator[ConsumerLoop[P]]:
    """The loop consuming in a task until the block ends; then it stops after its batch in hand."""
    task = asyncio.create_task(loop.run(), name="kafka-consumer")
    try:
        yield loop
    finally:
        loop.stop()
        await task
