"""The issue's crash test: 100,000 records (5% duplicates, 1% malformed) published while metering
processes (real `python -m services.metering` subprocesses sharing the partitions) are killed with
SIGKILL at random moments and restarted. Afterwards Postgres holds exactly the distinct valid
events and the dead-letter topic exactly the malformed records."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer

from services.runtime import kafka
from services.runtime.settings import Env, KafkaSettings
from tests.metering.conftest import FAST_CONSUMER
from tests.metering.topics import eventually, read_all
from tests.metering.usage_events import MODELS, agent_turn, malformed
from tests.tokens import TokenWorld

TOTAL = 100_000
MALFORMED = TOTAL // 100
DUPLICATES = TOTAL * 5 // 100
DISTINCT = TOTAL - MALFORMED - DUPLICATES
PARTITIONS = 4
PROCESSES = 2
KILLS = 6
PUBLISH_SECONDS = 8.0


class MeteringProcess:
    """One metering service process, killed and restarted by the test."""

    def __init__(self, environ: dict[str, str], log_path: Path) -> None:
        self._environ = {**os.environ, **environ}
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "services.metering"], env=self._environ, stdout=log, stderr=log
            )

    def kill(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def records() -> tuple[list[tuple[bytes, bytes]], set[str], int, list[bytes]]:
    """(key, value) pairs in publishing order, the distinct event ids, their input-token total,
    and the malformed values."""
    rng = random.Random(20261201)
    events = [
        agent_turn(f"t-{i % 10}", model=MODELS[i % 3], input_tokens=i % 997, output_tokens=1)
        for i in range(DISTINCT)
    ]
    pairs = [(e.tenant_id.encode(), e.SerializeToString()) for e in events]
    pairs += [rng.choice(pairs) for _ in range(DUPLICATES)]
    bad = [malformed(i) for i in range(MALFORMED)]
    pairs += [(b"t-bad", value) for value in bad]
    rng.shuffle(pairs)
    return pairs, {e.event_id for e in events}, sum(e.dimensions.input_tokens for e in events), bad


async def publish(producer: AIOKafkaProducer, topic: str, pairs: list[tuple[bytes, bytes]]) -> None:
    """Publish `pairs` spread over PUBLISH_SECONDS, so the kills land while records arrive."""
    chunk = 2_000
    pause = PUBLISH_SECONDS / (len(pairs) / chunk)
    for start in range(0, len(pairs), chunk):
        sends = [await producer.send(topic, value=v, key=k) for k, v in pairs[start : start + chunk]]
        await asyncio.gather(*sends)
        await asyncio.sleep(pause)


async def test_totals_are_exact_after_repeated_sigkills(
    metering_environ: dict[str, str], tokens: TokenWorld, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    environ = {**tokens.service_environ(metering_environ), "MACP_KAFKA_TOPIC_PARTITIONS": str(PARTITIONS)}
    environ["MACP_LOG_LEVEL"] = "warning"
    environ["MACP_METERING_METRICS_PORT"] = "0"  # two processes, two ports
    environ.update(FAST_CONSUMER)
    topic = environ["MACP_KAFKA_USAGE_TOPIC"]
    await kafka.ensure_topics(KafkaSettings.from_env(Env(environ)), [topic, f"{topic}.dead-letter"])
    pairs, distinct_ids, input_tokens, bad = records()
    processes = [MeteringProcess(environ, tmp_path / f"metering-{n}.log") for n in range(PROCESSES)]
    for process in processes:
        process.start()
    rng = random.Random(5)
    # The kill moments, at random over the publishing window (and a little past it).
    moments = sorted(rng.uniform(0.3, PUBLISH_SECONDS + 1) for _ in range(KILLS))
    kills = 0
    try:
        publishing = asyncio.create_task(publish(producer, topic, pairs))
        started = time.monotonic()
        for moment in moments:
            await asyncio.sleep(max(moment - (time.monotonic() - started), 0))
            victim = rng.choice(processes)
            victim.kill()
            kills += 1
            victim.start()
        await publishing

        async with asyncpg.create_pool(environ["MACP_DATABASE_URL"], min_size=1, max_size=1) as db:

            async def settled() -> bool:
                stored = await db.fetchval("SELECT count(*) FROM metering_usage_events")
                published = await db.fetchval(
                    "SELECT count(*) FROM metering_dead_letters WHERE publish_time IS NOT NULL"
                )
                return bool(stored == DISTINCT and published == MALFORMED)

            await eventually(settled, 60, f"{DISTINCT} events and {MALFORMED} dead letters")
            stored_ids = {
                str(row["event_id"]) for row in await db.fetch("SELECT event_id FROM metering_usage_events")
            }
            totals = await db.fetchrow(
                "SELECT sum(event_count) AS n, sum(input_tokens) AS i FROM metering_usage_rollups"
            )
        assert stored_ids == distinct_ids
        assert (totals["n"], totals["i"]) == (DISTINCT, input_tokens)
        letters = await read_all(environ["MACP_KAFKA_BOOTSTRAP"], f"{topic}.dead-letter")
        assert len(letters) == MALFORMED
        assert sorted(letter.value or b"" for letter in letters) == sorted(bad)
        assert kills == KILLS
        print(f"{kills} kills; settled {time.monotonic() - started:.1f} s after publishing began")
    finally:
        for process in processes:
            process.stop()
