"""S3: the endpoint at MACP_S3_ENDPOINT, else moto's S3 server run by our durable wrapper (s3_server.py)."""

from __future__ import annotations

import sys
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from services.runtime.settings import Env
from services.stack.config import embedded_port
from services.stack.part import Part
from services.stack.probes import answers, s3_client, s3_list_buckets
from services.stack.process import ManagedProcess, StartupError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# moto accepts any credentials; these fixed ones make the embedded endpoint's URL and keys stable.
EMBEDDED_ACCESS_KEY_ID = "macp"
EMBEDDED_SECRET_ACCESS_KEY = "macp-secret"


class S3(Part):
    name = "s3"
    url_variable = "MACP_S3_ENDPOINT"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 19000,
        configured_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str = "us-east-1",
        save_interval: float = 2.0,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(data_dir, configured_url, port, ready_timeout)
        embedded = configured_url is None
        self.access_key_id = access_key_id or (EMBEDDED_ACCESS_KEY_ID if embedded else None)
        self.secret_access_key = secret_access_key or (EMBEDDED_SECRET_ACCESS_KEY if embedded else None)
        self.region = region
        self.save_interval = save_interval
        self.state_file = data_dir / "s3" / "state.pickle"

    @classmethod
    def from_env(cls, env: Env, data_dir: Path) -> S3:
        url = env.url("MACP_S3_ENDPOINT", ("http", "https"), "http://127.0.0.1:9000")
        return cls(
            data_dir,
            port=0 if url else embedded_port(env, "s3"),
            configured_url=url,
            access_key_id=env.optional_string("MACP_S3_ACCESS_KEY_ID"),
            secret_access_key=env.optional_string("MACP_S3_SECRET_ACCESS_KEY"),
            region=env.string("MACP_S3_REGION", "us-east-1"),
        )

    @property
    def url(self) -> str:
        return self.configured_url or f"http://127.0.0.1:{self.port}"

    @cached_property
    def client(self) -> S3Client:
        return s3_client(self.url, self.access_key_id, self.secret_access_key, self.region)

    def probe(self) -> None:
        s3_list_buckets(self.client)

    def endpoint(self) -> tuple[str, int] | None:
        parts = urlsplit(self.url)
        return (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))

    def ensure_bucket(self, bucket: str) -> None:
        """Create bucket unless it exists (for the Kafka broker's storage)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            existing = {b.get("Name") for b in self.client.list_buckets().get("Buckets", [])}
            if bucket not in existing:
                self.client.create_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StartupError(f"cannot create S3 bucket {bucket!r} at {self.url}: {exc}") from None

    def env(self) -> dict[str, str]:
        """What services read to reach this S3."""
        values = {"MACP_S3_ENDPOINT": self.url}
        if self.access_key_id:
            values["MACP_S3_ACCESS_KEY_ID"] = self.access_key_id
        if self.secret_access_key:
            values["MACP_S3_SECRET_ACCESS_KEY"] = self.secret_access_key
        return values

    def _start_embedded(self, abort: threading.Event | None) -> None:
        self.process = ManagedProcess(
            self.name,
            [
                sys.executable,
                "-m",
                "services.stack.s3_server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--state-file",
                str(self.state_file),
                "--save-interval",
                str(self.save_interval),
            ],
            data_dir=self.data_dir,
            binary_source="the Python interpreter",
            ports=self.claims(),
            stop_timeout=15.0,
        )
        self.process.start()
        self.process.wait_ready(lambda: answers(self.probe), self.ready_timeout, abort=abort, interval=0.1)
