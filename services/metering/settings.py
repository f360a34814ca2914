"""The metering service's own settings (`MACP_METERING_*`), read once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.settings import Env, KafkaSettings, SettingsError


@dataclass(frozen=True)
class MeteringSettings:
    """consumer_group: the consumer group every metering process joins on the usage topic;
    dead_letter_topic: where records that cannot be decoded or fail validation go;
    batch_max_records / batch_linger_ms / poll_timeout_ms: how much one Postgres transaction takes,
    how long a batch keeps filling after its first record, and how long a poll waits;
    batches_in_flight: how many batches are recorded at once (two keep Postgres busy on one while
    the other commits and its offsets are sent);
    session_timeout_ms / heartbeat_interval_ms: how soon the group notices a dead process;
    reservation_ttl_seconds: how long a hold lasts when Reserve names no ttl;
    sweep_interval_seconds: how often quota deltas left behind by a crash are applied."""

    consumer_group: str
    dead_letter_topic: str
    batch_max_records: int
    batch_linger_ms: int
    batches_in_flight: int
    poll_timeout_ms: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    reservation_ttl_seconds: int
    sweep_interval_seconds: float

    @classmethod
    def from_env(cls, env: Env) -> MeteringSettings:
        usage_topic = KafkaSettings.from_env(env).usage_topic
        settings = cls(
            consumer_group=env.string("MACP_METERING_CONSUMER_GROUP", "macp-metering"),
            dead_letter_topic=env.string("MACP_METERING_DEAD_LETTER_TOPIC", f"{usage_topic}.dead-letter"),
            batch_max_records=env.integer(
                "MACP_METERING_BATCH_MAX_RECORDS", 5000, minimum=1, maximum=100_000
            ),
            batch_linger_ms=env.integer("MACP_METERING_BATCH_LINGER_MS", 100, minimum=0, maximum=10_000),
            batches_in_flight=env.integer("MACP_METERING_BATCHES_IN_FLIGHT", 2, minimum=1, maximum=8),
            poll_timeout_ms=env.integer("MACP_METERING_POLL_TIMEOUT_MS", 200, minimum=1, maximum=60_000),
            session_timeout_ms=env.integer(
                "MACP_METERING_SESSION_TIMEOUT_MS", 10_000, minimum=1_000, maximum=300_000
            ),
            heartbeat_interval_ms=env.integer(
                "MACP_METERING_HEARTBEAT_INTERVAL_MS", 3_000, minimum=100, maximum=60_000
            ),
            reservation_ttl_seconds=env.integer(
                "MACP_METERING_RESERVATION_TTL_SECONDS", 300, minimum=1, maximum=3600
            ),
            sweep_interval_seconds=env.number("MACP_METERING_SWEEP_INTERVAL_SECONDS", 5.0, minimum=0.1),
        )
        if settings.heartbeat_interval_ms * 3 > settings.session_timeout_ms:
            # Kafka's rule: a member must be able to miss two heartbeats before its session ends.
            raise SettingsError(
                f"MACP_METERING_HEARTBEAT_INTERVAL_MS={settings.heartbeat_interval_ms} is too long; set it "
                f"to at most a third of MACP_METERING_SESSION_TIMEOUT_MS ({settings.session_timeout_ms})"
            )
        return settings
