"""Typed settings read from the environment, failing fast with one line that names the variable.

Each process builds one frozen settings object at start-up from `os.environ` (tests pass their own
mapping). A missing or malformed value raises `SettingsError`, whose message is the single line the
entry point prints before exiting: the variable, what is wrong, and how to fix it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from services.runtime.registry import ENVOY, SERVICES, ServiceSpec

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line naming the variable and the fix."""


class Env:
    """Reads typed values from one environment mapping, naming the variable in every error."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def configured_ports(self) -> set[int]:
        """Every port a `MACP_*_PORT` variable names: what a part picking a free port must avoid."""
        ports: set[int] = set()
        for name, value in self._environ.items():
            if name.startswith("MACP_") and name.endswith("_PORT") and value.strip().isdigit():
                ports.add(int(value))
        return ports

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _parse(self, name: str, default: T | None, parse: Callable[[str], T], expected: str) -> T:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise SettingsError(f"{name} is not set; set it to {expected}")
            return default
        try:
            return parse(value)
        except ValueError as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise SettingsError(f"{name}={value!r} is malformed{detail}; set it to {expected}") from None

    def string(self, name: str, default: str | None = None) -> str:
        return self._parse(name, default, str, "a non-empty string")

    def optional_string(self, name: str) -> str | None:
        return self.raw(name)

    def integer(
        self, name: str, default: int | None = None, *, minimum: int = 0, maximum: int = 2**31
    ) -> int:
        def parse(text: str) -> int:
            if not re.fullmatch(r"[+-]?\d+", text):
                raise ValueError("not a whole number")
            number = int(text)
            if not minimum <= number <= maximum:
                raise ValueError(f"outside {minimum}..{maximum}")
            return number

        return self._parse(name, default, parse, f"a whole number from {minimum} to {maximum}")

    def port(self, name: str, default: int) -> int:
        """A TCP port; 0 asks the OS for any free one (tests run many stacks side by side)."""
        return self.integer(name, default, minimum=0, maximum=65535)

    def number(self, name: str, default: float | None = None, *, minimum: float = 0.0) -> float:
        def parse(text: str) -> float:
            try:
                number = float(text)
            except ValueError:
                raise ValueError("not a number") from None
            # float() takes "nan" and "inf", which no setting means (nan passes every comparison).
            if not math.isfinite(number):
                raise ValueError("not a finite number")
            if number < minimum:
                raise ValueError(f"below {minimum}")
            return number

        return self._parse(name, default, parse, f"a number of at least {minimum}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def parse(text: str) -> str:
            if text.lower() not in choices:
                raise ValueError(f"not one of {', '.join(choices)}")
            return text.lower()

        return self._parse(name, default, parse, f"one of {', '.join(choices)}")

    def names(self, name: str, default: tuple[str, ...], choices: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated list of names out of `choices`; `none` is the empty list (an empty value
        means unset, the default)."""

        def parse(text: str) -> tuple[str, ...]:
            if text.lower() == "none":
                return ()
            chosen = tuple(item.strip().lower() for item in text.split(","))
            unknown = [item for item in chosen if item not in choices]
            if unknown:
                raise ValueError(f"{', '.join(unknown)} is not one of {', '.join(choices)}")
            return chosen

        value = self.raw(name)
        if value is None:
            return default
        return self._parse(name, default, parse, f"none, or some of {', '.join(choices)} separated by commas")

    def url(self, name: str, schemes: tuple[str, ...], example: str) -> str | None:
        """An optional URL whose scheme is one of `schemes`; None when unset."""

        def parse(text: str) -> str:
            parts = urlsplit(text)
            if parts.scheme not in schemes or not parts.hostname:
                raise ValueError(f"expected a {'/'.join(s + '://' for s in schemes)} URL with a host")
            try:
                parts.port  # noqa: B018 - reading it validates the port number.
            except ValueError as exc:
                raise ValueError(str(exc)) from None
            return text

        if self.raw(name) is None:
            return None
        return self._parse(name, None, parse, f"a URL such as {example}")

    def required_url(self, name: str, schemes: tuple[str, ...], example: str) -> str:
        value = self.url(name, schemes, example)
        if value is None:
            raise SettingsError(f"{name} is not set; set it to a URL such as {example}")
        return value

    def address(self, name: str, default: str | None = None) -> str:
        """A `host:port` pair (or a comma-separated list of them)."""

        def parse(text: str) -> str:
            for item in text.split(","):
                if not _HOST_PORT.fullmatch(item.strip()):
                    raise ValueError(f"{item.strip()!r} is not host:port")
            return text

        return self._parse(name, default, parse, "host:port, e.g. 127.0.0.1:9092")


_HOST_PORT = re.compile(r"[A-Za-z0-9_.\-]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}")

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class CommonSettings:
    """What every MACP process reads: where it binds, how it logs, and how it stops."""

    bind_host: str
    log_level: str
    shutdown_grace_seconds: float
    mesh_address: str

    @classmethod
    def from_env(cls, env: Env) -> CommonSettings:
        return cls(
            bind_host=env.string("MACP_BIND_HOST", "127.0.0.1"),
            log_level=env.choice("MACP_LOG_LEVEL", "info", LOG_LEVELS),
            shutdown_grace_seconds=env.number("MACP_SHUTDOWN_GRACE_SECONDS", 10.0),
            mesh_address=env.address("MACP_MESH_ADDRESS", f"127.0.0.1:{ENVOY.mesh_port}"),
        )


REFLECTION_MODES = ("authenticated", "off")
SERVICE_NAMES = tuple(spec.name for spec in SERVICES)


@dataclass(frozen=True)
class ServerSettings:
    """A gRPC service's own listen and metrics ports (`MACP_<SERVICE>_PORT`, `..._METRICS_PORT`),
    and whether it serves gRPC reflection (`MACP_GRPC_REFLECTION`: `authenticated`, the default,
    answers only callers whose token the service accepts, as for any of its methods; `off` does not
    register reflection at all, for deployments that want no self-description on the port).

    needs (`MACP_<SERVICE>_NEEDS`): the services that must answer SERVING through the mesh before
    this one reports SERVING; the registry's `needs` unless set (`none`: no other service). Set it
    only for a partial mesh (a test, a deployment serving part of the API)."""

    port: int
    metrics_port: int
    reflection: bool
    needs: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Env, spec: ServiceSpec) -> ServerSettings:
        return cls(
            port=env.port(f"{spec.env_prefix}PORT", spec.port),
            metrics_port=env.port(f"{spec.env_prefix}METRICS_PORT", spec.metrics_port),
            reflection=env.choice("MACP_GRPC_REFLECTION", "authenticated", REFLECTION_MODES) != "off",
            needs=env.names(f"{spec.env_prefix}NEEDS", spec.needs, SERVICE_NAMES),
        )


@dataclass(frozen=True)
class PostgresSettings:
    url: str
    pool_min_size: int
    pool_max_size: int

    @classmethod
    def from_env(cls, env: Env) -> PostgresSettings:
        return cls(
            url=env.required_url(
                "MACP_DATABASE_URL", ("postgresql", "postgres"), "postgresql://postgres@127.0.0.1:5432/macp"
            ),
            pool_min_size=env.integer("MACP_DATABASE_POOL_MIN", 1, minimum=0, maximum=100),
            pool_max_size=env.integer("MACP_DATABASE_POOL_MAX", 10, minimum=1, maximum=1000),
        )


@dataclass(frozen=True)
class RedisSettings:
    url: str
    key_prefix: str
    # Connections one process may hold at once; a call beyond them waits for one to come free.
    max_connections: int = 100

    @classmethod
    def from_env(cls, env: Env) -> RedisSettings:
        return cls(
            url=env.required_url("MACP_REDIS_URL", ("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0"),
            key_prefix=env.string("MACP_REDIS_KEY_PREFIX", "macp:"),
            max_connections=env.integer("MACP_REDIS_MAX_CONNECTIONS", 100, minimum=2, maximum=10_000),
        )


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    usage_topic: str
    topic_partitions: int

    @classmethod
    def from_env(cls, env: Env) -> KafkaSettings:
        return cls(
            bootstrap_servers=env.address("MACP_KAFKA_BOOTSTRAP"),
            usage_topic=env.string("MACP_KAFKA_USAGE_TOPIC", "macp.usage.v1"),
            topic_partitions=env.integer("MACP_KAFKA_TOPIC_PARTITIONS", 6, minimum=1, maximum=1000),
        )


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None
    bucket: str
    region: str
    access_key_id: str | None
    secret_access_key: str | None

    @classmethod
    def from_env(cls, env: Env) -> S3Settings:
        return cls(
            endpoint_url=env.url("MACP_S3_ENDPOINT", ("http", "https"), "http://127.0.0.1:9000"),
            bucket=env.string("MACP_S3_BUCKET", "macp-archives"),
            region=env.string("MACP_S3_REGION", "us-east-1"),
            access_key_id=env.optional_string("MACP_S3_ACCESS_KEY_ID"),
            secret_access_key=env.optional_string("MACP_S3_SECRET_ACCESS_KEY"),
        )


def data_dir(env: Env) -> Path:
    """Where the native stack keeps its state (`MACP_DATA_DIR`, default `./.macp`)."""
    return Path(env.string("MACP_DATA_DIR", ".macp")).expanduser().resolve()


# The OTLP protocols: this build ships the HTTP/protobuf exporter only (services/runtime/tracing.py).
OTLP_PROTOCOLS = ("http/protobuf",)


@dataclass(frozen=True)
class TracingSettings:
    """Where a process exports its traces (services/runtime/tracing.py), or None: tracing off.

    `MACP_TRACES_ENDPOINT` is the full OTLP/HTTP traces URL; unset, the standard
    `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (also a full URL) and then `OTEL_EXPORTER_OTLP_ENDPOINT`
    (a base URL, to which the spec appends `/v1/traces`) are honoured, so a process dropped into an
    environment already set up for OpenTelemetry exports where everything else does.
    `OTEL_SDK_DISABLED=true` turns tracing off whatever is set. `MACP_TRACES_SAMPLE_RATIO` is the
    share of new traces recorded (a trace continued from a caller follows the caller's decision).
    """

    endpoint: str | None
    sample_ratio: float

    @classmethod
    def from_env(cls, env: Env) -> TracingSettings:
        example = "http://127.0.0.1:4318/v1/traces"
        endpoint = env.url("MACP_TRACES_ENDPOINT", ("http", "https"), example)
        if endpoint is None:
            endpoint = env.url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ("http", "https"), example)
        if endpoint is None:
            base = env.url("OTEL_EXPORTER_OTLP_ENDPOINT", ("http", "https"), "http://127.0.0.1:4318")
            endpoint = None if base is None else base.rstrip("/") + "/v1/traces"
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.raw(name)
            if protocol is not None and protocol not in OTLP_PROTOCOLS:
                raise SettingsError(
                    f"{name}={protocol!r} is not supported; set it to http/protobuf and point the "
                    "endpoint at the collector's OTLP/HTTP port (4318), or unset it"
                )
            if protocol is not None:
                break
        ratio = env.number("MACP_TRACES_SAMPLE_RATIO", 1.0, minimum=0.0)
        if ratio > 1.0:
            raise SettingsError(
                f"MACP_TRACES_SAMPLE_RATIO={ratio:g} is malformed (above 1); set it to a number from 0 to 1"
            )
        disabled = env.choice("OTEL_SDK_DISABLED", "false", ("true", "false")) == "true"
        return cls(endpoint=None if disabled else endpoint, sample_ratio=ratio)
