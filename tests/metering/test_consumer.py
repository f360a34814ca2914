"""The usage consumer against the real broker and Postgres: distinct events recorded once with
their rollups, duplicates ignored, bad records dead-lettered with their reason."""

from __future__ import annotations

import asyncio
import random
import urllib.request

from aiokafka import AIOKafkaProducer

from services.metering.dead_letters import REASON_HEADER, SOURCE_OFFSET_HEADER
from tests.metering.conftest import Metering
from tests.metering.topics import eventually, read_all
from tests.metering.usage_events import MODELS, agent_turn, malformed


def scrape(port: int) -> dict[str, float]:
    """The Prometheus samples the service's /metrics port serves, by their full name and labels."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def test_batches_are_recorded_once_with_rollups_and_bad_records_dead_lettered(
    metering: Metering, producer: AIOKafkaProducer
) -> None:
    rng = random.Random(6)
    events = [
        agent_turn(f"t-{i % 3}", model=MODELS[i % 3], input_tokens=i, output_tokens=2 * i) for i in range(300)
    ]
    values = [e.SerializeToString() for e in events]
    values += [rng.choice(values) for _ in range(20)]  # duplicates, delivered again later
    bad = [malformed(i) for i in range(6)]
    values += bad
    rng.shuffle(values)
    for value in values:
        await producer.send(metering.topic, value=value, key=b"k")
    await producer.flush()

    async def settled() -> bool:
        stored = await metering.db.fetchval("SELECT count(*) FROM metering_usage_events")
        published = await metering.db.fetchval(
            "SELECT count(*) FROM metering_dead_letters WHERE publish_time IS NOT NULL"
        )
        return bool(stored == 300 and published == 6)

    await eventually(settled, 30, "300 events recorded and 6 dead letters published")

    totals = await metering.db.fetchrow(
        "SELECT sum(event_count) AS n, sum(input_tokens) AS i, sum(output_tokens) AS o"
        " FROM metering_usage_rollups"
    )
    assert (totals["n"], totals["i"], totals["o"]) == (300, sum(range(300)), 2 * sum(range(300)))
    per_model = await metering.db.fetch(
        "SELECT model, sum(event_count) AS n FROM metering_usage_rollups"
        " WHERE tenant_id = 't-1' GROUP BY model"
    )
    assert {row["model"]: row["n"] for row in per_model} == {MODELS[1]: 100}

    letters = await read_all(metering.environ["MACP_KAFKA_BOOTSTRAP"], f"{metering.topic}.dead-letter")
    assert sorted(letter.value or b"" for letter in letters) == sorted(bad)
    for letter in letters:
        headers = dict(letter.headers)
        assert headers[REASON_HEADER]
        assert headers[SOURCE_OFFSET_HEADER].isdigit()
    # The signals: records by outcome (duplicates ignored, dead letters), records/s and lag.
    samples = await asyncio.to_thread(scrape, metering.metrics_port)
    topic = f'topic="{metering.topic}"'
    assert samples[f'macp_consumer_records_total{{outcome="recorded",service="metering",{topic}}}'] == 300
    assert samples[f'macp_consumer_records_total{{outcome="duplicate",service="metering",{topic}}}'] == 20
    assert samples[f'macp_consumer_records_total{{outcome="dead_lettered",service="metering",{topic}}}'] == 6
    assert samples[f'macp_consumer_lag{{partition="0",service="metering",{topic}}}'] == 0
    assert any(name.startswith("macp_consumer_records_per_second") for name in samples)
    reasons = {dict(letter.headers)[REASON_HEADER].decode() for letter in letters}
    assert any(reason.startswith("invalid UsageEvent: event_id: ") for reason in reasons)
    assert any("empty record value" in reason for reason in reasons)
