"""`macp up` and `macp status` as a user runs them: real processes, real signals, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from services.runtime.registry import EXAMPLE_TOOL_SERVERS, PROVIDER_SERVER, SERVICES
from services.stack import stackfile
from services.stack.config import FREE_PORTS_ENV, free_port
from services.stack.infra import scratch_data_dir

REPO = Path(__file__).resolve().parents[2]


def stack_environ(data_dir: Path) -> dict[str, str]:
    """This environment without MACP_* settings, plus free ports for every part of the stack."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MACP_")}
    environ |= FREE_PORTS_ENV
    environ["MACP_DATA_DIR"] = str(data_dir)
    for name in ("FRONT", "MESH", "ADMIN"):
        environ[f"MACP_ENVOY_{name}_PORT"] = str(free_port())
    for prefix in [spec.env_prefix for spec in SERVICES] + ["MACP_EDGE_"]:
        environ[f"{prefix}PORT"] = str(free_port())
        environ[f"{prefix}METRICS_PORT"] = str(free_port())
    for spec in SERVICES:
        if spec.http_port is not None:
            environ[spec.http_port_variable] = str(free_port())
    environ["MACP_PROVIDER_SERVER_PORT"] = str(free_port())  # no provider key here: it runs too
    for example in EXAMPLE_TOOL_SERVERS:
        environ[example.port_variable] = str(free_port())
    # Two more Python processes per stack cost every test that starts one; the test of what
    # `macp up` runs turns them on.
    environ["MACP_EXAMPLE_TOOLS"] = "off"
    return environ


def macp(*args: str, environ: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=environ,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class FakeStack:
    """`macp up` with stand-in services (tests/stack/fake_up.py), as a child we can signal."""

    def __init__(self, data_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.environ = stack_environ(data_dir) | (settings or {})
        self.out = (data_dir.parent / "up.out").open("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.stack.fake_up", "--data-dir", str(data_dir)],
            env=self.environ,
            cwd=REPO,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            document = stackfile.read(self.data_dir)
            if document and document.get("state") == "ready":
                return document
            if self.process.poll() is not None:
                pytest.fail(f"macp up exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.2)
        pytest.fail(f"macp up was not ready within {timeout} s:\n{self.output()}")

    def wait_for(self, what: str, test: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first stack.json for which test() holds, within timeout seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            document = stackfile.read(self.data_dir)
            if document is not None and test(document):
                return document
            time.sleep(0.05)
        pytest.fail(
            f"{what} within {timeout} s; stack.json: {stackfile.read(self.data_dir)}\n{self.output()}"
        )

    def close(self) -> None:
        # SIGTERM first: `macp up` stops its children on it; SIGKILL would leave them running
        # (each in its own process group), holding their ports for the next test.
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.out.close()


@pytest.fixture
def fake_stack(request: pytest.FixtureRequest) -> Iterator[FakeStack]:
    """`macp up` of stand-ins; a test marked `with_example_tools` runs the example servers too."""
    settings = {"MACP_EXAMPLE_TOOLS": "on"} if request.node.get_closest_marker("with_example_tools") else None
    with scratch_data_dir() as base:  # not tmp_path: see infra.scratch_data_dir
        stack = FakeStack(base / "data", settings)
        try:
            yield stack
        finally:
            stack.close()


def recorded_processes(document: dict[str, Any]) -> list[psutil.Process]:
    """Every process stack.json names (and everything in their process groups)."""
    processes = [psutil.Process(document["supervisor"]["pid"])]
    for component in document["components"]:
        if component.get("pid"):
            processes.append(psutil.Process(component["pid"]))
    groups = {proc.pid for proc in processes[1:]}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in groups and proc not in processes:
                processes.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return processes


def assert_all_gone(processes: list[psutil.Process], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    alive = processes
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.mark.integration
@pytest.mark.with_example_tools
def test_up_reaches_ready_and_sigterm_leaves_nothing_behind(fake_stack: FakeStack) -> None:
    document = fake_stack.wait_ready()
    names = {component["name"] for component in document["components"]}
    assert names == {
        "postgres",
        "redis",
        "s3",
        "kafka",
        "envoy",
        "edge",
        PROVIDER_SERVER.name,
        *(s.name for s in SERVICES),
        *(example.name for example in EXAMPLE_TOOL_SERVERS),
    }
    assert document["ready_seconds"] < 20
    processes = recorded_processes(document)
    assert len(processes) >= 12  # supervisor, 4 infra, envoy, 5 services, edge (+ Postgres' helpers)

    status = macp("status", "--data-dir", str(fake_stack.data_dir), environ=fake_stack.environ)
    assert status.returncode == 0, status.stdout + status.stderr
    for name in names:
        assert name in status.stdout

    # A second `macp up` on the same data dir refuses, and touches nothing of the first.
    second = macp("up", "--data-dir", str(fake_stack.data_dir), environ=fake_stack.environ)
    assert second.returncode == 1
    assert "already runs" in second.stderr
    assert all(p.is_running() for p in processes)

    fake_stack.process.send_signal(signal.SIGTERM)
    assert fake_stack.process.wait(timeout=60) == 0, fake_stack.output()
    assert_all_gone(processes)
    assert "stopped" in fake_stack.output()
    gone = macp("status", "--data-dir", str(fake_stack.data_dir), environ=fake_stack.environ)
    assert gone.returncode == 3, gone.stdout


def component(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in document["components"] if c["name"] == name)
    return found


@pytest.mark.integration
def test_a_killed_child_is_restarted_and_the_rest_run_on(fake_stack: FakeStack) -> None:
    document = fake_stack.wait_ready()
    before = {c["name"]: c["pid"] for c in document["components"]}
    victims = ("conversation", "redis")  # a service and an embedded part
    for name in victims:
        os.kill(before[name], signal.SIGKILL)

    def back(document: dict[str, Any]) -> bool:
        return all(
            component(document, name)["pid"] not in (None, before[name])
            and stackfile.alive(component(document, name))
            for name in victims
        )

    # Running again within 5 s of the kill, then ready (state running) again.
    fake_stack.wait_for("the killed children running again", back, timeout=5)
    document = fake_stack.wait_for(
        "the killed children ready again",
        lambda d: all(component(d, name)["state"] == "running" for name in victims),
        timeout=30,
    )
    for name in victims:
        record = component(document, name)
        assert (record["restarts"], record["last_exit_code"]) == (1, -9), record
        assert record["last_exit_at"]
        assert f"{name} exited with code -9; restarting (restart 1)" in fake_stack.output()
        assert f"{name} ready again in" in fake_stack.output()
        assert (
            f"{name}: exited with code -9; restarting (restart 1)"
            in (fake_stack.data_dir / "logs" / f"{name}.log").read_text()
        )
    # Nothing else was touched: every other child keeps its pid, and the supervisor runs on.
    for name, pid in before.items():
        if name not in victims:
            assert component(document, name)["pid"] == pid, name
            assert psutil.pid_exists(pid), name
    assert fake_stack.process.poll() is None

    status = macp("status", "--data-dir", str(fake_stack.data_dir), environ=fake_stack.environ)
    assert status.returncode == 0, status.stdout + status.stderr
    header, *rows = status.stdout.splitlines()[1:]
    assert "RESTARTS" in header, header
    assert "LAST EXIT" in header, header
    for name in victims:
        row = next(row.split() for row in rows if row.split()[0] == name)
        assert row[3:7] == ["running", "ok", "1", "-9"], row
    untouched = next(row.split() for row in rows if row.split()[0] == "token")
    assert untouched[5:7] == ["0", "-"], untouched

    processes = recorded_processes(document)
    fake_stack.process.send_signal(signal.SIGTERM)
    assert fake_stack.process.wait(timeout=60) == 0, fake_stack.output()
    assert_all_gone(processes)


@pytest.fixture
def crash_prone_stack() -> Iterator[FakeStack]:
    """A fake stack that calls a child crash-looping after its third death within 60 s."""
    with scratch_data_dir() as base:
        stack = FakeStack(base / "data", {"MACP_STACK_RESTART_LIMIT": "2"})
        try:
            yield stack
        finally:
            stack.close()


@pytest.mark.integration
def test_a_crash_loop_stops_the_stack_naming_the_child(crash_prone_stack: FakeStack) -> None:
    stack = crash_prone_stack
    document = stack.wait_ready()
    processes = recorded_processes(document)
    (stack.data_dir / "crash-conversation").touch()  # from now on it exits 3 as it starts
    os.kill(component(document, "conversation")["pid"], signal.SIGKILL)
    assert stack.process.wait(timeout=60) == 1, stack.output()
    output = stack.output()
    # Killed, then two restarts that die at once: the third death within the window is the loop.
    assert "conversation exited with code -9; restarting (restart 1)" in output
    assert "restarting (restart 2) in 0.5 s" in output
    assert "conversation is crash-looping: it died 3 times within 60 s (last exit code 3;" in output
    assert "| conversation: told to crash" in output  # its last log lines
    assert_all_gone(processes)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], variable: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MACP_LOG_LEVEL", "loud"),
        ("MACP_ENVOY_FRONT_PORT", "abc"),
        ("MACP_EMBEDDED_REDIS_PORT", "-1"),
        ("MACP_STACK_RESTART_LIMIT", "-1"),
    ],
)
def test_a_malformed_setting_ends_up_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    environ = stack_environ(tmp_path) | {variable: value}
    result = macp("up", environ=environ)
    _assert_one_line_error(result, variable)
    assert result.returncode == 2
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_port_in_use_ends_up_before_anything_starts(tmp_path: Path) -> None:
    environ = stack_environ(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        environ["MACP_ENVOY_FRONT_PORT"] = str(port)
        result = macp("up", environ=environ)
    _assert_one_line_error(result, "MACP_ENVOY_FRONT_PORT")
    assert result.stderr.strip() == (
        f"macp up: port {port} (envoy front listener) is already in use by another process; "
        "stop it or set MACP_ENVOY_FRONT_PORT"
    )
    assert list((tmp_path / "run").glob("*.pid")) == []
    assert not (tmp_path / "postgres").exists()


def test_status_with_nothing_running_exits_3(tmp_path: Path) -> None:
    result = macp("status", "--data-dir", str(tmp_path), environ=stack_environ(tmp_path))
    assert result.returncode == 3
    assert "nothing runs" in result.stdout


def test_status_of_a_stack_whose_supervisor_died_exits_3(tmp_path: Path) -> None:
    stackfile.write(
        tmp_path,
        {
            "state": "ready",
            "supervisor": {"pid": os.getpid(), "create_time": psutil.Process().create_time() - 50},
            "components": [{"name": "redis", "kind": "infra", "pid": 1, "create_time": 0.0, "check": {}}],
        },
    )
    result = macp("status", "--data-dir", str(tmp_path), environ=stack_environ(tmp_path))
    assert result.returncode == 3, result.stdout
    assert json.loads(stackfile.stack_file(tmp_path).read_text())["state"] == "ready"
