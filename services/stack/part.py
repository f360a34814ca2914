"""What every infrastructure part shares: configured by URL (only checked) or embedded (run by us)."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from services.stack.config import embedded_claim
from services.stack.probes import ProbeError
from services.stack.process import ManagedProcess, PortClaim, StartupError


def redact(url: str) -> str:
    """url without its password, for error messages and status output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Part(ABC):
    """One piece of infrastructure (Postgres, Redis, Kafka, S3).

    When its URL setting is present the part is someone else's server: start() only checks that it
    answers and stop() leaves it alone. Otherwise start() runs the embedded server in the data dir
    and returns once it really serves.
    """

    name: str
    url_variable: str
    default_port: int = 0  # of the URL scheme, when a configured URL leaves the port out
    # A configured server should already run; this much patience covers one that is just starting.
    configured_patience: float = 3.0

    def __init__(self, data_dir: Path, configured_url: str | None, port: int, ready_timeout: float) -> None:
        self.data_dir = data_dir
        self.configured_url = configured_url
        self.port = port  # of the embedded server; unused when configured_url is set
        self.ready_timeout = ready_timeout
        self.process: ManagedProcess | None = None

    @property
    def external(self) -> bool:
        return self.configured_url is not None

    @property
    @abstractmethod
    def url(self) -> str:
        """Where clients reach this part (the value services read from url_variable)."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @abstractmethod
    def probe(self) -> None:
        """Raise ProbeError unless the part serves requests right now."""

    @abstractmethod
    def _start_embedded(self, abort: threading.Event | None) -> None:
        """Run the embedded server and return once it is ready."""

    def start(self, abort: threading.Event | None = None) -> None:
        if self.configured_url is None:
            self._start_embedded(abort)
        else:
            self._check_configured()

    def claims(self) -> list[PortClaim]:
        """The port the embedded server will take (none for a configured one)."""
        return [] if self.external else [embedded_claim(self.name, self.port)]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def poll(self) -> int | None:
        """Exit code of the embedded server once it has died, else None (also for external parts)."""
        return self.process.poll() if self.process is not None else None

    def endpoint(self) -> tuple[str, int] | None:
        """host and port of url, for a plain TCP check (None for a unix socket)."""
        parts = urlsplit(self.url)
        if not parts.hostname:
            return None
        return parts.hostname, parts.port or self.default_port

    def record(self) -> dict[str, Any]:
        """What `macp status` needs to find and check this part again (written to stack.json)."""
        record = self.process.record if self.process is not None else None
        return {
            "name": self.name,
            "kind": "infra",
            "pid": record.pid if record else None,
            "create_time": record.create_time if record else None,
            "url": redact(self.url),
            "external": self.external,
            "check": self.check_spec(),
        }

    def check_spec(self) -> dict[str, Any]:
        """How status checks this part: by its own protocol when embedded, by TCP when configured
        (a configured URL may hold a password, which must not be written to stack.json)."""
        if not self.external:
            return {"type": self.name, "url": self.url}
        endpoint = self.endpoint()
        if endpoint is None:
            return {"type": "none"}
        return {"type": "tcp", "host": endpoint[0], "port": endpoint[1]}

    def _check_configured(self) -> None:
        deadline = time.monotonic() + self.configured_patience
        while True:
            try:
                self.probe()
                return
            except ProbeError as exc:
                if time.monotonic() >= deadline:
                    raise StartupError(
                        f"{self.url_variable}={redact(self.url)} does not answer ({exc}); start that "
                        f"server, or unset {self.url_variable} to run an embedded {self.name}"
                    ) from None
            time.sleep(0.2)
