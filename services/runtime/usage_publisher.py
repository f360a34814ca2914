"""Usage events to Kafka, none lost: a Redis stream is the outbox in front of the producer.

`publish(event)` returns once the event is in the outbox (one XADD); a background loop moves
outbox entries to the usage topic (serialized protobuf, keyed by tenant, CloudEvents headers per
the Kafka protocol binding) and deletes each only after the broker acknowledged it (acks=all).
While Kafka is down, events wait in Redis and the loop retries with backoff; nothing is dropped.

What survives what: the outbox lives in Redis, not in this process, so a crash or restart of
the publishing process loses no published event. Entries a crashed process had read but not
yet acknowledged are claimed by the next publisher of the same outbox once they have been idle
for `claim_idle_seconds`. Between a broker's ack and the outbox delete a crash can send an event
twice; the sink de-duplicates by `event_id` (the tansu broker refuses idempotent producers, see
DESIGN.md). Redis itself must persist (AOF or RDB) for events to survive a crash of Redis.

Traces: `publish` is the event's PRODUCER span (with tracing on), and the span's W3C headers are
stored in the outbox entry beside the event, so the record sent later, by the loop and perhaps by
another process, carries the trace of the turn that made the event (Kafka headers `traceparent`,
`tracestate`) for the metering consumer to continue. With tracing off, the caller's own headers
(if a traced call came in) are stored and sent instead, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from macp.common.v1 import usage_pb2
from opentelemetry.trace import SpanKind
from redis.exceptions import ResponseError

from services.runtime import tracing
from services.runtime.aio import cancel_and_wait, until_set

log = logging.getLogger("macp.usage")

GROUP = "usage-publisher"
EVENT_FIELD = b"event"
# The W3C trace context of the event's producer, kept in the outbox entry beside the event.
TRACEPARENT_FIELD = tracing.TRACEPARENT.encode()
TRACESTATE_FIELD = tracing.TRACESTATE.encode()
_TRACE_FIELDS = ((tracing.TRACEPARENT, TRACEPARENT_FIELD), (tracing.TRACESTATE, TRACESTATE_FIELD))
BATCH_SIZE = 500
BROKER_CHECK_SECONDS = 1.0  # a live broker answers a metadata request in milliseconds
CE_SPECVERSION = "1.0"
CONTENT_TYPE = "application/protobuf"

Entry = tuple[bytes, dict[bytes, bytes] | None]


# How long an entry another publisher read waits before this one takes it over. Short, because a
# publisher that crashed holds its entries until then, and usage must reach metering within seconds
# of a crash; a live publisher re-reads its own entries at least this often while it retries (its
# backoff is shorter), and an entry taken from one that was merely slow is delivered twice, which
# the sink de-duplicates by event_id.
CLAIM_IDLE_SECONDS = 5.0
# The longest wait between delivery attempts while Kafka is away: well inside the claim time, and
# short enough that waiting usage follows within seconds once the broker is back.
RETRY_MAX_SECONDS = 2.0


def outbox_key(redis_key_prefix: str, topic: str) -> str:
    return f"{redis_key_prefix}usage-outbox:{topic}"


def cloudevent_type(event: usage_pb2.UsageEvent) -> str:
    """`macp.usage.v1.agent_turn` and the like, from the event's type."""
    name = usage_pb2.UsageEventType.Name(event.type).removeprefix("USAGE_EVENT_TYPE_").lower()
    return f"macp.usage.v1.{name}"


def cloudevent_headers(event: usage_pb2.UsageEvent, source: str) -> list[tuple[str, bytes]]:
    """The CloudEvents attributes of `event` as Kafka headers (binary content mode)."""
    return [
        ("ce_specversion", CE_SPECVERSION.encode()),
        ("ce_id", event.event_id.encode()),
        ("ce_type", cloudevent_type(event).encode()),
        ("ce_source", source.encode()),
        ("ce_time", event.time.ToJsonString().encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]


class UsagePublisher:
    """One process's publisher of usage events to `topic`, through the Redis outbox at `key`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        key: str,
        source: str,
        claim_idle_seconds: float = CLAIM_IDLE_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
    ) -> None:
        self._redis = redis
        self._producer = producer
        self.topic = topic
        self.key = key
        self.source = source
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._claim_idle_ms = int(claim_idle_seconds * 1000)
        self._retry_max_seconds = retry_max_seconds
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._last_claim = 0.0
        self._unwritten: list[tuple[dict[bytes, bytes], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.delivered = 0
        self.delivery_failures = 0

    async def publish(self, event: usage_pb2.UsageEvent) -> None:
        """Put `event` in the outbox, returning once Redis has it.

        Concurrent publishes share one pipelined round trip (a burst of a thousand turns ending
        at once costs a few XADD batches, not a thousand connections), and the write runs in a
        task of its own, so a caller cancelled meanwhile (a cancelled Generate) still records it.
        """
        if not event.event_id or not event.tenant_id:
            raise ValueError("a usage event needs its event_id and tenant_id")
        with tracing.span(
            f"publish {self.topic}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": self.topic,
                "messaging.message.id": event.event_id,
                "macp.usage.type": cloudevent_type(event),
            },
        ):
            fields = {EVENT_FIELD: event.SerializeToString()}
            headers = tracing.current_headers()
            if headers is not None:
                fields[TRACEPARENT_FIELD] = headers[0].encode()
                if headers[1] is not None:
                    fields[TRACESTATE_FIELD] = headers[1].encode()
            written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._unwritten.append((fields, written))
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write_outbox())
            await asyncio.shield(written)

    async def _write_outbox(self) -> None:
        while self._unwritten:
            batch, self._unwritten = self._unwritten[:BATCH_SIZE], self._unwritten[BATCH_SIZE:]
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for fields, _ in batch:
                        pipe.xadd(self.key, cast(Any, fields))
                    await pipe.execute()
            except Exception as exc:
                for _, written in batch:
                    if not written.done():
                        written.set_exception(exc)
            else:
                for _, written in batch:
                    if not written.done():
                        written.set_result(None)

    async def waiting(self) -> int:
        """Events in the outbox not yet acknowledged by Kafka."""
        return int(await self._redis.xlen(self.key))

    async def start(self) -> None:
        try:
            await self._redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another publisher made the group first
                raise
        self._task = asyncio.create_task(self._run(), name=f"usage-publisher:{self.topic}")

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Deliver what is waiting for up to `drain_seconds`, then stop; the rest stays in the outbox.

        With the broker gone there is nothing to wait for: no delivery can finish, so the stop is
        at once (a dead Kafka made a stopping stack wait out the whole drain).
        """
        self._stopping.set()
        if self._task is None:
            return
        if not await self._broker_answers():
            drain_seconds = 0.0
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_seconds)
        except TimeoutError:
            log.warning(
                "usage outbox not drained at stop; the next publisher delivers it", extra={"key": self.key}
            )
        finally:
            await cancel_and_wait(self._task)

    async def _broker_answers(self) -> bool:
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), BROKER_CHECK_SECONDS)
        except Exception:
            return False
        return True

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                entries = await self._next_batch()
                if not entries:
                    if self._stopping.is_set():
                        return
                    continue
                await self._deliver(entries)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.delivery_failures += 1
                log.warning(
                    "usage delivery failed; retrying", extra={"topic": self.topic, "error": repr(exc)}
                )
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._retry_max_seconds)

    async def _read(self, start: str, block_ms: int | None) -> list[Entry]:
        answer = await self._redis.xreadgroup(
            GROUP, self._consumer, {self.key: start}, count=BATCH_SIZE, block=block_ms
        )
        # [[stream key, [(entry id, fields), ...]]]; redis-py types the reply loosely.
        batches: list[tuple[bytes, list[Entry]]] = answer or []  # type: ignore[assignment]
        return [entry for _, entries in batches for entry in entries]

    async def _next_batch(self) -> list[Entry]:
        """Own unacknowledged entries first (a failed delivery), then others' abandoned ones, then new."""
        pending = await self._read("0", None)
        if pending:
            return pending
        now = time.monotonic()
        if now - self._last_claim >= self._claim_idle_ms / 1000:
            self._last_claim = now
            claimed = await self._redis.xautoclaim(
                self.key, GROUP, self._consumer, self._claim_idle_ms, "0-0", count=BATCH_SIZE
            )
            if claimed[1]:
                return list(claimed[1])
        if self._stopping.is_set():
            return await self._read(">", None)
        return await self._read_new_until_stopping()

    async def _read_new_until_stopping(self) -> list[Entry]:
        """New entries, waiting up to half a second for some, but no longer once `stop()` is called
        (it would otherwise wait out the blocked read). What a read cut short had already handed
        this consumer is in its pending list, which the next batch reads first."""
        reading = await until_set(self._read(">", 500), self._stopping)
        return [] if reading.cancelled() else reading.result()

    async def _deliver(self, entries: Sequence[Entry]) -> None:
        sent = []
        done: list[bytes] = []
        for entry_id, fields in entries:
            fields = fields or {}
            data = fields.get(EVENT_FIELD)
            if data is None:  # deleted after delivery by a publisher that then crashed before its ack
                done.append(entry_id)
                continue
            event = usage_pb2.UsageEvent.FromString(data)
            headers = cloudevent_headers(event, self.source)
            for name, field in _TRACE_FIELDS:
                if field in fields:
                    headers.append((name, fields[field]))
            sent.append(
                await self._producer.send(
                    self.topic, value=data, key=event.tenant_id.encode(), headers=headers
                )
            )
            done.append(entry_id)
        await asyncio.gather(*sent)  # every one acknowledged by the broker, or this raises
        if done:
            await self._redis.xack(self.key, GROUP, *done)
            await self._redis.xdel(self.key, *done)
        self.delivered += len(sent)


@asynccontextmanager
async def running_usage_publisher(
    redis: aioredis.Redis, producer: AIOKafkaProducer, *, topic: str, redis_key_prefix: str, source: str
) -> AsyncIterator[UsagePublisher]:
    """A started publisher for the block; stopped (after a short drain) when it ends."""
    publisher = UsagePublisher(
        redis, producer, topic=topic, key=outbox_key(redis_key_prefix, topic), source=source
    )
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()
