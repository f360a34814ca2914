"""`python -m bench.kafka_storage`: what one usage event costs the embedded Kafka's storage, and how
that grows with what the log already holds.

The embedded broker (tansu, as `macp up` runs it) keeps each produced batch as one object in the S3
emulation (moto behind services/stack/s3_server.py). Rows, each at a log size reached by filling one
partition with single-record batches (as usage events arrive at a few per second, one batch each):

- a produce of one record, acknowledged (acks=all), while a consumer follows the partition (as the
  metering consumer does), so each record is also fetched once: the CPU of the S3 emulation and of
  tansu per record, and the produce's latency;
- for comparison, the same loop with the log in tansu's memory storage (no S3 at all).

Closed loop, bounded in count, on 127.0.0.1, stopping by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.cpu import CpuMeter
from bench.stats import machine_line, markdown_table
from services.stack.infra import Infrastructure, ephemeral_infrastructure
from services.stack.kafka import KafkaStorage

TOPIC = "bench-storage"
RECORD = b"x" * 200  # about a serialized usage event
# A record is produced this long after the last one, so each is its own batch and fetch, as the
# usage events of turns a few tens of milliseconds apart are.
PACE_SECONDS = 0.02


@dataclass(frozen=True)
class Row:
    storage: str
    batches_before: int
    records: int
    s3_ms: float
    tansu_ms: float
    produce_p50_ms: float


@contextmanager
def running_infrastructure(storage: KafkaStorage) -> Iterator[Infrastructure]:
    with ephemeral_infrastructure(kafka_storage=storage) as infrastructure:
        yield infrastructure


async def _fill(producer: AIOKafkaProducer, batches: int) -> None:
    """`batches` one-record batches: each send waits for its acknowledgement, so none share one."""
    for _ in range(batches):
        await producer.send_and_wait(TOPIC, RECORD, partition=0)


class Follower:
    """A consumer reading the partition as the metering consumer does, counting what it fetched."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.count = 0
        self._target = 0
        self._reached = asyncio.Event()

    async def run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            self.count += sum(len(records) for records in batch.values())
            if self.count >= self._target:
                self._reached.set()

    async def until(self, count: int, seconds: float) -> bool:
        """Whether it has fetched `count` records in all within `seconds`."""
        self._target = count
        self._reached.clear()
        if self.count >= count:
            return True
        try:
            await asyncio.wait_for(self._reached.wait(), seconds)
        except TimeoutError:
            return False
        return True


async def _row(
    producer: AIOKafkaProducer, follower: Follower, meter: CpuMeter, storage: str, size: int, records: int
) -> Row:
    """`records` paced single-record produces, each fetched once by `follower`."""
    start_count = follower.count
    before, latencies = meter.read(), []
    for _ in range(records):
        started = time.perf_counter()
        await producer.send_and_wait(TOPIC, RECORD, partition=0)
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(PACE_SECONDS)
    if not await follower.until(start_count + records, 10.0):
        raise RuntimeError(f"the consumer fetched {follower.count - start_count} of {records} records")
    spent = CpuMeter.spent(before, meter.read())
    return Row(
        storage,
        size,
        records,
        spent.get("s3", 0.0) * 1000 / records,
        spent.get("kafka", 0.0) * 1000 / records,
        statistics.median(latencies) * 1000,
    )


async def _measure(
    bootstrap: str, meter: CpuMeter, storage: str, sizes: list[int], records: int
) -> list[Row]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=bootstrap, group_id="bench", auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()
    follower = Follower(consumer)
    following = asyncio.create_task(follower.run())
    rows, produced = [], 0
    try:
        for size in sizes:
            await _fill(producer, size - produced)
            produced = size
            # The consumer catches up with the fill before the row's CPU is read.
            if not await follower.until(produced, 120.0):
                raise RuntimeError(f"the consumer fetched {follower.count} of the {produced} filled records")
            rows.append(await _row(producer, follower, meter, storage, size, records))
            produced += records
    finally:
        following.cancel()
        await consumer.stop()
        await producer.stop()
    return rows


def run(storage: KafkaStorage, sizes: list[int], records: int, progress: bool) -> list[Row]:
    with running_infrastructure(storage) as infrastructure:
        pids = {part.name: part.pid for part in infrastructure.parts if part.pid is not None}
        if progress:
            print(f"# {storage}: infrastructure up", file=sys.stderr, flush=True)
        return asyncio.run(_measure(infrastructure.kafka.url, CpuMeter(pids), storage, sizes, records))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=100, help="records measured per row")
    parser.add_argument(
        "--sizes", default="0,1000,3000", help="batches in the partition before each row (ascending)"
    )
    args = parser.parse_args(argv)
    sizes = sorted(int(size) for size in args.sizes.split(","))
    rows = run("s3", sizes, args.records, True) + run("memory", sizes[:1], args.records, True)
    table = markdown_table(
        [
            "Kafka log in",
            "batches already in the partition",
            "records",
            "S3 emulation CPU ms per record",
            "tansu CPU ms per record",
            "produce p50 ms",
        ],
        [
            [
                "S3 emulation (moto)" if row.storage == "s3" else "tansu's memory",
                f"{row.batches_before:,}",
                str(row.records),
                f"{row.s3_ms:.2f}",
                f"{row.tansu_ms:.2f}",
                f"{row.produce_p50_ms:.2f}",
            ]
            for row in rows
        ],
    )
    print(f"{table}\n\n{machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
