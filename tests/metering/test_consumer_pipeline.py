"""The consumer loop with two batches in flight, against the real broker: a batch that is slow to
become durable holds back the commit of every batch after it, so the group's committed offset never
passes a record whose effect is not durable, while the next batch is handled meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.runtime.consumer import ConsumerLoop, ConsumerSettings, Record, running
from services.runtime.metrics import ConsumerMetrics
from tests.metering.topics import eventually

RECORDS = 40
BATCH = 5


class SlowEveryOtherBatch:
    """A sink whose every other batch takes long to be durable; it notes what is durable."""

    def __init__(self) -> None:
        self.durable: set[int] = set()
        self.handling = 0
        self.most_at_once = 0
        self._batches = 0

    async def prepare(self, records: Sequence[Record]) -> list[int]:
        return [record.offset for record in records]

    async def handle(self, prepared: list[int]) -> Mapping[str, int]:
        self._batches += 1
        self.handling += 1
        self.most_at_once = max(self.most_at_once, self.handling)
        try:
            await asyncio.sleep(0.4 if self._batches % 2 else 0.01)
        finally:
            self.handling -= 1
        self.durable.update(prepared)
        return {"recorded": len(prepared)}

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        pass


async def test_commits_never_pass_a_batch_still_being_made_durable(service_environ: dict[str, str]) -> None:
    bootstrap, topic = service_environ["MACP_KAFKA_BOOTSTRAP"], service_environ["MACP_KAFKA_USAGE_TOPIC"]
    group = f"pipeline-{topic}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send(topic, value=str(i).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    sink = SlowEveryOtherBatch()
    settings = ConsumerSettings(
        bootstrap_servers=bootstrap,
        topic=topic,
        group_id=group,
        max_batch=BATCH,
        linger_ms=0,
        poll_timeout_ms=50,
        max_in_flight=2,
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    tp = TopicPartition(topic, 0)
    seen: list[int] = []
    try:
        async with running(ConsumerLoop(settings, sink, ConsumerMetrics("test"))):

            async def all_committed() -> bool:
                offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
                committed = offsets[tp].offset if tp in offsets else -1
                # Read after the commit, so every offset below it must be durable by now.
                durable = set(sink.durable)
                assert all(offset in durable for offset in range(committed)), (committed, sorted(durable))
                seen.append(committed)
                return committed == RECORDS

            await eventually(all_committed, 30, f"all {RECORDS} offsets committed")
    finally:
        await admin.close()
    assert sink.most_at_once == 2  # the pipeline did run two batches at once
    assert seen == sorted(seen)  # and the committed offset only ever moved forward


async def test_a_stop_while_the_group_still_holds_the_join_ends_promptly(
    service_environ: dict[str, str],
) -> None:
    # The broker holds a new group's first join for half the session timeout (3 s here), waiting
    # for more members; a stop meanwhile must not wait it out (the close gets 1 s).
    bootstrap, topic = service_environ["MACP_KAFKA_BOOTSTRAP"], service_environ["MACP_KAFKA_USAGE_TOPIC"]
    settings = ConsumerSettings(
        bootstrap_servers=bootstrap,
        topic=topic,
        group_id=f"held-{topic}",
        max_batch=BATCH,
        linger_ms=0,
        poll_timeout_ms=50,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1000,
    )
    loop = ConsumerLoop(settings, SlowEveryOtherBatch(), ConsumerMetrics("test"))
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.3)  # the join is in flight
    assert not task.done()
    stopped_at = asyncio.get_running_loop().time()
    loop.stop()
    await asyncio.wait_for(task, 5)
    assert asyncio.get_running_loop().time() - stopped_at < 2.0
