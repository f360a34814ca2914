"""Kafka: the producer every service publishes usage events with, and topic creation.

The producer waits for all in-sync replicas (`acks="all"`). It is not idempotent on purpose: the
tansu broker refuses InitProducerId, so duplicates are removed in the sink, by event id.
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from services.runtime.settings import KafkaSettings

log = logging.getLogger("macp.kafka")


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
