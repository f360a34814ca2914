"""Each embedded part, started for real in a tmp data dir on free ports, and talked to for real."""

from __future__ import annotations

import os
import pwd
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis as redis_client
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.runtime.settings import Env
from services.stack.config import FREE_PORTS_ENV, EnvoyPorts, free_port
from services.stack.envoy import Envoy
from services.stack.infra import ephemeral_infrastructure, scratch_data_dir, start_infrastructure
from services.stack.kafka import Kafka
from services.stack.postgres import Postgres
from services.stack.probes import http_get
from services.stack.process import StartupError
from services.stack.redis import Redis
from services.stack.s3 import S3

pytestmark = pytest.mark.integration


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir the embedded Postgres user can always reach (see infra.scratch_data_dir)."""
    with scratch_data_dir() as path:
        yield path


async def test_postgres_serves_queries_and_keeps_data_across_a_restart(data_dir: Path) -> None:
    postgres = Postgres(data_dir, port=free_port())
    postgres.start()
    try:
        assert postgres.pid is not None
        if os.geteuid() == 0:  # Postgres refuses root: it must run as the unprivileged user
            owner = pwd.getpwuid(os.stat(postgres.pgdata).st_uid).pw_name
            assert owner == "embedded_postgres"
        connection = await asyncpg.connect(postgres.url)
        try:
            assert await connection.fetchval("SELECT current_database()") == "macp"
            await connection.execute("CREATE TABLE notes (body text)")
            await connection.execute("INSERT INTO notes VALUES ('kept')")
        finally:
            await connection.close()
    finally:
        postgres.stop()

    again = Postgres(data_dir, port=postgres.port)
    again.start()
    try:
        connection = await asyncpg.connect(again.url)
        try:
            assert await connection.fetchval("SELECT body FROM notes") == "kept"
        finally:
            await connection.close()
    finally:
        again.stop()


def test_redis_keeps_data_across_a_restart(data_dir: Path) -> None:
    server = Redis(data_dir, port=free_port())
    server.start()
    try:
        client = redis_client.Redis.from_url(server.url)
        assert client.ping()
        client.set("macp:test", "kept")
        client.close()
    finally:
        server.stop()
    assert (data_dir / "redis").is_dir()

    again = Redis(data_dir, port=server.port)
    again.start()
    try:
        client = redis_client.Redis.from_url(again.url)
        assert client.get("macp:test") == b"kept"
        client.close()
    finally:
        again.stop()


def test_a_configured_server_is_checked_not_started(data_dir: Path) -> None:
    embedded = Redis(data_dir / "a", port=free_port())
    embedded.start()
    try:
        configured = Redis.from_env(Env({"MACP_REDIS_URL": embedded.url}), data_dir / "b")
        configured.start()
        assert configured.external
        assert configured.pid is None
        assert configured.url == embedded.url
        configured.stop()  # leaves someone else's server alone
        assert embedded.poll() is None
    finally:
        embedded.stop()


def test_a_configured_server_that_does_not_answer_names_the_variable(data_dir: Path) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    configured = Redis.from_env(Env({"MACP_REDIS_URL": url}), data_dir)
    configured.configured_patience = 0.3
    with pytest.raises(StartupError) as caught:
        configured.start()
    message = str(caught.value)
    assert message.startswith("MACP_REDIS_URL=redis://:***@127.0.0.1:")
    assert "unset MACP_REDIS_URL" in message
    assert "secret" not in message


async def test_kafka_in_memory_produces_and_consumes(data_dir: Path) -> None:
    broker = Kafka(data_dir, port=free_port(), storage="memory")
    broker.start()
    try:
        await _produce(broker.url, "macp.test", b"hello")
        assert await _consume_one(broker.url, "macp.test") == b"hello"
    finally:
        broker.stop()


def test_s3_objects_survive_a_restart_and_a_kill(data_dir: Path) -> None:
    s3 = S3(data_dir, port=free_port(), save_interval=0.5)
    s3.start()
    try:
        s3.client.create_bucket(Bucket="macp-archives")
        s3.client.put_object(
            Bucket="macp-archives", Key="a/b.json", Body=b'{"kept": true}', ContentType="x/y"
        )
    finally:
        s3.stop()  # SIGTERM: the wrapper saves on the way out

    again = S3(data_dir, port=s3.port, save_interval=0.5)
    again.start()
    try:
        got = again.client.get_object(Bucket="macp-archives", Key="a/b.json")
        assert got["Body"].read() == b'{"kept": true}'
        assert got["ContentType"] == "x/y"
        again.client.put_object(Bucket="macp-archives", Key="late", Body=b"saved periodically")
        time.sleep(1.5)  # longer than the save interval
        assert again.pid is not None
        os.killpg(again.pid, signal.SIGKILL)  # no chance to save on the way out
    finally:
        again.stop()

    third = S3(data_dir, port=s3.port)
    third.start()
    try:
        assert (
            third.client.get_object(Bucket="macp-archives", Key="late")["Body"].read()
            == b"saved periodically"
        )
    finally:
        third.stop()


def test_envoy_runs_a_config_and_is_ready(data_dir: Path) -> None:
    ports = EnvoyPorts(front=free_port(), mesh=free_port(), admin=free_port())
    config = data_dir / "envoy.yaml"
    config.write_text(_MINIMAL_ENVOY.format(admin=ports.admin, front=ports.front, hcm=_HCM_TYPE))
    envoy = Envoy(data_dir, config, ports)
    envoy.start()
    try:
        assert http_get(f"{envoy.admin_url}/ready") == (200, b"LIVE\n")
        assert http_get(f"{envoy.url}/anything") == (200, b"macp envoy test")
    finally:
        envoy.stop()
    assert envoy.poll() is not None


async def test_infrastructure_with_kafka_on_s3_loses_nothing_across_a_restart(data_dir: Path) -> None:
    """What `macp up` runs: Kafka storing in S3, so a restart of the whole stack keeps messages."""
    env = Env(FREE_PORTS_ENV)
    topic = f"macp.restart.{uuid.uuid4().hex[:8]}"
    with start_infrastructure(env, data_dir, kafka_storage="s3") as infra:
        assert set(infra.env) >= {
            "MACP_DATABASE_URL",
            "MACP_REDIS_URL",
            "MACP_KAFKA_BOOTSTRAP",
            "MACP_S3_ENDPOINT",
            "MACP_S3_ACCESS_KEY_ID",
            "MACP_S3_SECRET_ACCESS_KEY",
        }
        assert infra.env["MACP_DATABASE_URL"].endswith("/macp")
        await _produce(infra.kafka.url, topic, b"durable")
        pids = [part.pid for part in infra.parts]
    assert all(pid is not None for pid in pids)

    with start_infrastructure(env, data_dir, kafka_storage="s3") as infra:
        assert await _consume_one(infra.kafka.url, topic) == b"durable"


async def test_ephemeral_infrastructure_serves_every_part_then_leaves_nothing() -> None:
    """The way a test session gets its infrastructure (see infra.py)."""
    with ephemeral_infrastructure() as infra:
        directory = infra.postgres.data_dir
        env = infra.env
        connection = await asyncpg.connect(env["MACP_DATABASE_URL"])
        assert await connection.fetchval("SELECT 1") == 1
        await connection.close()
        assert redis_client.Redis.from_url(env["MACP_REDIS_URL"]).ping()
        assert "Buckets" in infra.s3.client.list_buckets()
        await _produce(env["MACP_KAFKA_BOOTSTRAP"], "macp.ephemeral", b"x")
        processes = [part.process for part in infra.parts]
    assert all(process is not None and process.poll() is not None for process in processes)
    assert not directory.exists()


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    # tansu refuses the idempotent producer (DESIGN.md); acks=all is still honoured.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume_one(bootstrap: str, topic: str) -> bytes:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        message = await consumer.getone()
        assert message.value is not None
        return bytes(message.value)
    finally:
        await consumer.stop()


_HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_MINIMAL_ENVOY = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: {front}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                direct_response: {{status: 200, body: {{inline_string: macp envoy test}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
