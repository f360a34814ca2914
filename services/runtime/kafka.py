"""Kafka: the producer every service publishes usage events with, and topic creation.

The producer waits for all in-sync replicas (`acks="all"`). It is not idempotent on purpose: the
tansu broker refuses InitProducerId, so duplicates are removed in the sink, by event id. Its close
flushes for a few seconds at most (stop_producer): a broker that is gone must not hold up a
service's stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from services.runtime.settings import KafkaSettings

log = logging.getLogger("macp.kafka")

# How long a stopping service lets its producer flush. A live broker acknowledges in milliseconds;
# a dead one would keep aiokafka waiting for each buffered batch's request timeout (40 s), past
# the stop grace of `macp up` (MACP_SHUTDOWN_GRACE_SECONDS + 5 s) or of an orchestrator, which
# then kills the process: a stack whose Kafka had died took 16.7 s to stop instead of 2.5 s.
PRODUCER_CLOSE_SECONDS = 2.0


async def ensure_topics(settings: KafkaSettings, topics: list[str]) -> None:
    """Create the topics that do not exist yet; one that exists is left as it is."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        new = [
            NewTopic(name=t, num_partitions=settings.topic_partitions, replication_factor=1) for t in missing
        ]
        # Another process may create it between our list and create: that is the goal anyway.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
        log.info("topics created", extra={"topics": missing})
    finally:
        await admin.close()


async def start_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
    )
    await producer.start()
    return producer


async def stop_producer(producer: AIOKafkaProducer, flush_seconds: float = PRODUCER_CLOSE_SECONDS) -> None:
    """Flush what the producer buffers and close it; past `flush_seconds` give up on the flush.

    What is dropped then was never acknowledged, so its sender still holds it: usage events stay
    in their Redis outbox (services/runtime/usage_publisher.py) until Kafka acknowledges them.
    """
    try:
        await asyncio.wait_for(producer.stop(), flush_seconds)
    except TimeoutError:
        log.warning("kafka producer closed without flushing: the broker does not answer")
        # The flush was cut short before the sender and the connections closed: close them here
        # (aiokafka has no public way to abandon a flush).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer._sender.close(), 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.client.close(), 1.0)
