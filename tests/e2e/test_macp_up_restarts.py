"""`macp up` with the real services keeps the stack running through a crash: SIGKILL the embedded
Postgres, the embedded Redis and the conversation service at once, and each is running again
within 5 s and ready soon after, while every other process keeps its pid and every service
rides out the restarts of its dependencies (NOT_SERVING at most, never an exit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.stack import stackfile
from services.stack.infra import scratch_data_dir
from services.stack.probes import ProbeError, grpc_serving
from tests.e2e.test_macp_up import _wait_ready, spawn_up, stop_up
from tests.stack.test_up import assert_all_gone, macp, recorded_processes, stack_environ

pytestmark = pytest.mark.integration

VICTIMS = ("postgres", "redis", "conversation")
RUNNING_AGAIN_SECONDS = 5.0


@pytest.fixture
def up() -> Iterator[tuple[subprocess.Popen[str], Path, dict[str, str], Path]]:
    """A real `macp up` on free ports: its process, data dir, environment and output file."""
    with scratch_data_dir() as base:
        data_dir = base / "data"
        environ = stack_environ(data_dir)
        log = base / "up.out"
        process = spawn_up(data_dir, environ, log)
        try:
            yield process, data_dir, environ, log
        finally:
            stop_up(process)


def component(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in document["components"] if c["name"] == name)
    return found


def serving(address: str) -> str:
    """SERVING, or why not (NOT_SERVING, UNAVAILABLE: nothing listens)."""
    try:
        grpc_serving(address, timeout=0.5)
    except ProbeError as exc:
        return str(exc).rsplit(": ", 1)[-1]
    return "SERVING"


def test_killed_parts_and_a_service_come_back_and_the_rest_run_on(
    up: tuple[subprocess.Popen[str], Path, dict[str, str], Path],
) -> None:
    process, data_dir, environ, log = up
    _wait_ready(process, data_dir, log)
    document = stackfile.read(data_dir)
    assert document is not None
    before = {c["name"]: c["pid"] for c in document["components"]}
    services = [c for c in document["components"] if c["kind"] == "service"]
    address = component(document, "conversation")["check"]["address"]
    assert serving(address) == "SERVING"

    killed_at = time.monotonic()
    for name in VICTIMS:
        os.kill(before[name], signal.SIGKILL)

    # Each victim runs again (a new pid that stack.json names, alive) within 5 s of its death.
    running_again: dict[str, float] = {}
    seen: list[str] = []  # the conversation service's health, as a client saw it meanwhile
    deadline = killed_at + 60
    while time.monotonic() < deadline:
        now = time.monotonic()
        current = stackfile.read(data_dir) or document
        for name in VICTIMS:
            record = component(current, name)
            if name not in running_again and record["pid"] != before[name] and stackfile.alive(record):
                running_again[name] = now - killed_at
        health = serving(address)
        if not seen or seen[-1] != health:
            seen.append(health)
        ready = all(component(current, name).get("state") == "running" for name in VICTIMS)
        if ready and len(running_again) == len(VICTIMS) and health == "SERVING":
            break
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    output = log.read_text()
    assert set(running_again) == set(VICTIMS), output
    slow = {name: seconds for name, seconds in running_again.items() if seconds > RUNNING_AGAIN_SECONDS}
    assert not slow, f"not running again within {RUNNING_AGAIN_SECONDS} s: {slow}\n{output}"
    # Down (NOT_SERVING, or nothing listening) after the kill, then SERVING again.
    assert any(health != "SERVING" for health in seen), seen
    assert seen[-1] == "SERVING", f"{seen}\n{output}"
    for name in VICTIMS:
        assert f"{name} exited with code -9; restarting (restart 1)" in output
        assert f"{name} ready again in" in output

    # Nobody else died: every other process keeps its pid, and every service is SERVING again
    # (a service whose dependency restarted may say NOT_SERVING until its next check).
    document = stackfile.read(data_dir)
    assert document is not None
    for name, pid in before.items():
        if name not in VICTIMS:
            assert component(document, name)["pid"] == pid, f"{name} was restarted\n{output}"
            assert component(document, name)["restarts"] == 0, name
    deadline = time.monotonic() + 20
    for spec in services:
        while (health := serving(spec["check"]["address"])) != "SERVING":
            assert time.monotonic() < deadline, f"{spec['name']} stays {health}"
            time.sleep(0.2)
    # The edge is ready again a moment after the services it needs (it checks every 0.5 s).
    while (status := macp("status", "--data-dir", str(data_dir), environ=environ)).returncode != 0:
        assert time.monotonic() < deadline, status.stdout
        time.sleep(0.2)
    for name in VICTIMS:
        row = next(line.split() for line in status.stdout.splitlines() if line.startswith(f"{name} "))
        assert row[3:7] == ["running", "ok", "1", "-9"], row

    processes = recorded_processes(document)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()
    assert_all_gone(processes)
