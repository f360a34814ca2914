"""supervisor.py: the backoff, a restart that keeps the rest untouched, and the crash loop, on small
shell children (tests/stack/test_up.py runs the same through `macp up`)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from services.runtime.settings import Env, SettingsError
from services.stack.process import ManagedProcess
from services.stack.supervisor import CrashLoop, RestartPolicy, Supervisor, restart_process


def test_backoff_starts_at_once_doubles_and_is_capped() -> None:
    policy = RestartPolicy()
    assert [policy.delay(streak) for streak in range(1, 8)] == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_the_limits_are_settings_and_a_malformed_one_is_named() -> None:
    policy = RestartPolicy.from_env(
        Env({"MACP_STACK_RESTART_LIMIT": "2", "MACP_STACK_RESTART_WINDOW_SECONDS": "10"})
    )
    assert (policy.limit, policy.window) == (2, 10.0)
    assert RestartPolicy.from_env(Env({})) == RestartPolicy()
    with pytest.raises(SettingsError, match="MACP_STACK_RESTART_LIMIT"):
        RestartPolicy.from_env(Env({"MACP_STACK_RESTART_LIMIT": "many"}))


def _child(tmp_path: Path, name: str, script: str) -> ManagedProcess:
    process = ManagedProcess(name, ["/bin/sh", "-c", script], data_dir=tmp_path, stop_timeout=2)
    process.start()
    return process


def _run(supervisor: Supervisor, until: float) -> CrashLoop | None:
    """Check as `macp up` does for `until` seconds; the crash loop, if one came."""
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        loop = supervisor.check()
        if loop is not None:
            return loop
        time.sleep(0.02)
    return None


def test_a_dead_child_is_restarted_and_its_neighbour_is_left_alone(tmp_path: Path) -> None:
    lines: list[str] = []
    abort = threading.Event()
    supervisor = Supervisor(RestartPolicy(stable=0.5), lines.append, abort)
    victim = _child(tmp_path, "victim", "echo up; exec sleep 30")
    neighbour = _child(tmp_path, "neighbour", "exec sleep 30")
    try:
        for process in (victim, neighbour):
            supervisor.add(process.name, process, restart_process(process, lambda: True, timeout=5))
        first, other = victim.pid, neighbour.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert _run(supervisor, 1.0) is None
        assert victim.pid != first
        assert victim.poll() is None
        assert neighbour.pid == other
        record = supervisor.record("victim")
        assert record["state"] == "running"
        assert (record["restarts"], record["last_exit_code"]) == (1, -9)
        assert supervisor.record("neighbour")["restarts"] == 0
        assert lines[0] == "victim exited with code -9; restarting (restart 1) ..."
        assert lines[1].startswith("victim ready again in ")
        log = victim.log_path.read_text()
        assert "victim: exited with code -9; restarting (restart 1) ..." in log
        assert "victim: ready again in " in log
        # Up for longer than `stable`: the next death is restarted at once again, not after 0.5 s.
        _run(supervisor, 0.6)
        os.kill(victim.pid or 0, signal.SIGKILL)
        _run(supervisor, 0.5)
        assert lines[2] == "victim exited with code -9; restarting (restart 2) ..."
    finally:
        abort.set()
        supervisor.join()
        victim.stop()
        neighbour.stop()


def test_a_child_that_keeps_dying_is_a_crash_loop(tmp_path: Path) -> None:
    lines: list[str] = []
    abort = threading.Event()
    supervisor = Supervisor(RestartPolicy(limit=2, backoff_first=0.05), lines.append, abort)
    child = _child(tmp_path, "flaky", "echo 'cannot open the thing'; exit 3")
    try:
        supervisor.add("flaky", child, restart_process(child, lambda: False, timeout=5))
        loop = _run(supervisor, 10)
        assert loop is not None, lines
        assert loop.name == "flaky"
        assert loop.exit_code == 3
        assert loop.deaths == 3
        assert "flaky is crash-looping: it died 3 times within 60 s (last exit code 3;" in loop.message
        assert any("cannot open the thing" in line for line in loop.log_tail)
        assert lines[0] == "flaky exited with code 3; restarting (restart 1) ..."
        assert lines[1].startswith("flaky failed to start again (flaky exited with code 3 while starting")
        assert "restarting (restart 2) in 0.05 s" in lines[1]
    finally:
        abort.set()
        supervisor.join()
        child.stop()
