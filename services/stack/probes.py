"""Health probes for the parts of the stack, shared by `macp up` (readiness) and `macp status`.

Each probe talks the part's own protocol (a Postgres query, a Redis PING, a Kafka Metadata
request, an S3 ListBuckets, gRPC health, HTTP) because an open TCP port says little: Postgres
accepts connections while it still refuses queries, and a gRPC server answers before it is SERVING.
A probe returns None when healthy and raises ProbeError with a short reason otherwise.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")


class ProbeError(Exception):
    """A part does not answer as it should; the message says how."""


def answers(probe: Callable[[], None]) -> bool:
    """True when probe() passes; for polling loops that only need yes or no."""
    try:
        probe()
    except ProbeError:
        return False
    return True


def tcp(host: str, port: int, timeout: float = 1.0) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ProbeError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None


# Proxies from the environment must never apply to loopback health checks.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """Status and (start of the) body of GET url; ProbeError when nothing answers."""
    try:
        with _HTTP.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read(65536))
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (OSError, ValueError) as exc:
        raise ProbeError(f"GET {url} failed: {exc}") from None


def http_ok(url: str, timeout: float = 1.0, expect: bytes | None = None) -> None:
    status, body = http_get(url, timeout)
    if status != 200 or (expect is not None and expect not in body):
        raise ProbeError(f"GET {url} answered {status} {body[:60]!r}")


def envoy_ready(admin_port: int, timeout: float = 1.0) -> None:
    """Envoy's admin /ready answers 200 LIVE once its listeners are up (PRE_INITIALIZING before)."""
    http_ok(f"http://127.0.0.1:{admin_port}/ready", timeout, expect=b"LIVE")


def grpc_serving(address: str, timeout: float = 1.0) -> None:
    """grpc.health.v1 Check(service="") on address answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            check: grpc.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
            check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # set in __init__
            response = check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            raise ProbeError(f"gRPC health on {address}: {exc.code().name}") from None
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        raise ProbeError(f"gRPC health on {address}: {status_name}")


def redis_ping(url: str, timeout: float = 1.0) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ProbeError(f"Redis PING failed: {exc}") from None
    finally:
        client.close()


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when this thread already runs a loop.

    The stack's API is synchronous so that plain code, threads and pytest fixtures can all call it;
    an async caller (a pytest-asyncio fixture) must not have asyncio.run() fail under it.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:  # re-raised in the calling thread below
            error.append(exc)

    worker = threading.Thread(target=target, name="macp-probe")
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


def postgres_query(url: str, timeout: float = 2.0) -> None:
    """Connect to url and run SELECT 1."""
    import asyncpg

    async def query() -> None:
        connection = await asyncpg.connect(url, timeout=timeout)
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    try:
        run_coroutine(query)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise ProbeError(f"Postgres query failed: {exc}") from None


def kafka_metadata(host: str, port: int, timeout: float = 2.0) -> None:
    """Send a Kafka Metadata (v1, all topics) request and expect at least one broker back.

    Raw wire protocol rather than a client library: it is a dozen bytes, needs no event loop, and
    Metadata (unlike ApiVersions) makes the broker read its storage, so it answers only when ready.
    """
    correlation_id = 0x4D414350  # "MACP"
    client_id = b"macp-probe"
    body = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id + struct.pack(">i", -1)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(struct.pack(">i", len(body)) + body)
            # size, correlation id and the broker count lead the response; the rest is not needed.
            _size, got_id, brokers = struct.unpack(">iii", _read_exactly(conn, 12))
    except OSError as exc:
        raise ProbeError(f"Kafka Metadata on {host}:{port} failed: {exc.strerror or exc}") from None
    if got_id != correlation_id or brokers < 1:
        raise ProbeError(f"Kafka Metadata on {host}:{port} returned no broker")


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        data += chunk
    return data


def s3_client(endpoint: str, access_key: str | None, secret_key: str | None, region: str) -> S3Client:
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's default session is not safe to share between threads.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}, proxies={}),
    )


def s3_list_buckets(client: S3Client) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.list_buckets()
    except (BotoCoreError, ClientError) as exc:
        raise ProbeError(f"S3 ListBuckets failed: {exc}") from None
