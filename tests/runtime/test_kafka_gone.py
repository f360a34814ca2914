"""A service's stop with its Kafka broker gone: the producer's flush and the usage outbox's drain
give up at once or within seconds, instead of waiting out aiokafka's 40 s request timeout (which
made a stack whose Kafka had died take 16.7 s to stop), and the undelivered event stays in the
outbox for the next publisher."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from macp.common.v1 import usage_pb2

from services.runtime import kafka
from services.runtime.settings import Env, KafkaSettings
from services.runtime.usage_publisher import UsagePublisher
from services.stack.config import free_port
from services.stack.infra import Infrastructure, scratch_data_dir
from services.stack.kafka import Kafka

pytestmark = pytest.mark.integration

TOPIC = "usage-gone"


@pytest.fixture
def broker() -> Iterator[Kafka]:
    """A tansu broker of this test's own (in memory), which the test kills."""
    with scratch_data_dir() as directory:
        part = Kafka(directory, port=free_port(), storage="memory")
        part.start()
        try:
            yield part
        finally:
            part.stop()


@pytest.fixture
async def producer(broker: Kafka) -> AsyncIterator[AIOKafkaProducer]:
    settings = KafkaSettings.from_env(Env({"MACP_KAFKA_BOOTSTRAP": broker.url}))
    await kafka.ensure_topics(settings, [TOPIC])
    started = await kafka.start_producer(settings)
    try:
        yield started
    finally:
        await kafka.stop_producer(started)


def event() -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(event_id=str(uuid.uuid4()), tenant_id="tenant-gone")


async def kill(broker: Kafka) -> None:
    assert broker.process is not None
    broker.process.stop(timeout=0)  # as a crash would: the connections drop, nothing is flushed
    await asyncio.sleep(0.3)


async def test_a_producer_with_a_buffered_record_stops_within_seconds(
    broker: Kafka, producer: AIOKafkaProducer
) -> None:
    await producer.send_and_wait(TOPIC, b"delivered")
    await kill(broker)
    await producer.send(TOPIC, b"never acknowledged")
    began = time.monotonic()
    await kafka.stop_producer(producer)
    assert time.monotonic() - began < kafka.PRODUCER_CLOSE_SECONDS + 2.5


async def test_the_outbox_stops_at_once_and_keeps_what_it_could_not_deliver(
    broker: Kafka, producer: AIOKafkaProducer, infrastructure: Infrastructure
) -> None:
    redis = aioredis.from_url(infrastructure.redis.url)
    publisher = UsagePublisher(
        redis, producer, topic=TOPIC, key=f"outbox-{uuid.uuid4().hex}", source="test-kafka-gone"
    )
    try:
        await publisher.start()
        await publisher.publish(event())
        deadline = time.monotonic() + 10
        while publisher.delivered < 1:
            assert time.monotonic() < deadline, "the first event was never delivered"
            await asyncio.sleep(0.05)
        await kill(broker)
        await publisher.publish(event())
        began = time.monotonic()
        await publisher.stop()
        assert time.monotonic() - began < 1.5  # not the 5 s drain: nothing can be delivered
        assert await publisher.waiting() == 1
    finally:
        await redis.delete(publisher.key)
        await redis.aclose()
