"""Supervised child processes: start, wait until ready, stop the whole process group.

Every child runs in its own session (hence its own process group) so that Ctrl-C in the terminal
reaches only `macp up`, which then stops the children in a chosen order, and so that stopping a
child also stops whatever it forked. Each child's pid is written to `<data_dir>/run/<name>.pid`
(pid and start time, so a reused pid is never mistaken for ours): `macp status` reads these, and
the next `macp up` kills what a crashed run left behind before it starts again. A child that
died can be started again (stop() clears what it left behind, then start()): that is how
`macp up` restarts it (services/stack/supervisor.py).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil

REINSTALL_HINT = "reinstall it with `pip install -e .` (or `./dev up`)"


class StartupError(Exception):
    """A part of the stack could not start; str() is the one line to print (what, why, and the fix).

    details: optional further lines (the tail of a child's log) a caller may print below it.
    """

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.details = list(details)


@dataclass(frozen=True)
class PortClaim:
    """A TCP port a child will listen on, with the words and setting that name it in an error."""

    port: int
    label: str
    variable: str
    host: str = "127.0.0.1"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on (or holds) host:port."""
    # Connecting catches a listener on any address (0.0.0.0, or one that sets SO_REUSEPORT).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((host, port)) == 0:
            return True
    # Binding catches a port that is bound but not yet listening. SO_REUSEADDR, as every server we
    # start sets it, so that a port merely in TIME_WAIT from a previous run counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(claims: Iterable[PortClaim]) -> None:
    """Raise StartupError naming the first port that is taken (or claimed twice) and its setting."""
    seen: dict[int, PortClaim] = {}
    for claim in claims:
        earlier = seen.get(claim.port)
        if earlier is not None:
            raise StartupError(
                f"port {claim.port} is configured for both {earlier.label} ({earlier.variable}) and "
                f"{claim.label} ({claim.variable}); set one of them to another port"
            )
        seen[claim.port] = claim
        if port_in_use(claim.port, claim.host):
            raise StartupError(
                f"port {claim.port} ({claim.label}) is already in use by another process; "
                f"stop it or set {claim.variable}"
            )


def require_binary(path: str | Path, source: str) -> str:
    """The path of an executable, or StartupError naming it, where it comes from, and the fix."""
    binary = Path(path)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise StartupError(f"{binary.name} binary not found at {binary} (from {source}); {REINSTALL_HINT}")
    return str(binary)


def as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a child as `user` with that user's group and no others.

    Popen(user=...) alone changes only the uid: the child would keep root's groups, and then the
    group bits of root-owned directories, not the "other" bits, would decide what it may reach.
    """
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass(frozen=True)
class PidRecord:
    """What `<name>.pid` holds: the pid and its start time, which together identify one process."""

    pid: int
    create_time: float

    @classmethod
    def read(cls, path: Path) -> PidRecord | None:
        try:
            pid_text, time_text = path.read_text().split()[:2]
            return cls(int(pid_text), float(time_text))
        except (OSError, ValueError):
            return None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(f"{self.pid}\n{self.create_time:.3f}\n")
        scratch.replace(path)  # a reader never sees half a file

    def process(self) -> psutil.Process | None:
        """The live process this record names, or None (gone, a zombie, or the pid was reused)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None


def kill_group(pid: int, sig: signal.Signals) -> None:
    """Send sig to the process group led by pid (our children lead their own); ignore a gone group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def terminate_tree(proc: psutil.Process, timeout: float) -> None:
    """Stop a process we no longer hold a Popen for: SIGTERM its group, then SIGKILL it."""
    try:
        leads_group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return
    if leads_group:
        kill_group(proc.pid, signal.SIGTERM)
    else:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    with contextlib.suppress(psutil.Error):
        proc.wait(timeout)
    if leads_group:
        kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(psutil.Error):
        proc.kill()


def group_members(pgid: int, started_before: float) -> list[psutil.Process]:
    """Processes in process group pgid that were started before the given time."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.create_time() < started_before:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def kill_and_wait(processes: Sequence[psutil.Process], timeout: float = 5.0) -> None:
    """SIGKILL processes and wait until each is gone or a zombie (an orphan's zombie waits for
    whoever adopted it, which may never reap it; a zombie holds no port, memory or lock)."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + timeout
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        alive = [proc for proc in alive if _running(proc)]
        if alive:
            time.sleep(0.02)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def append_note(log_path: Path, name: str, message: str) -> None:
    """Add a `==== macp` line to a child's log: the supervisor's word among the child's own lines."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with contextlib.suppress(OSError):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:  # O_APPEND: never lands inside a line the child writes
            log.write(f"==== macp {stamp} {name}: {message}\n".encode())


def reap_stale(pid_file: Path, timeout: float = 5.0) -> int | None:
    """Kill the process a previous run recorded in pid_file if it still runs; return its pid."""
    record = PidRecord.read(pid_file)
    proc = record.process() if record else None
    if proc is not None:
        terminate_tree(proc, timeout)
    pid_file.unlink(missing_ok=True)
    return proc.pid if proc is not None else None


class ManagedProcess:
    """One supervised child: its own process group, a log file and a pid file in the data dir."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        data_dir: Path,
        binary_source: str = "the macp installation",
        env: Mapping[str, str] | None = None,
        ports: Sequence[PortClaim] = (),
        user: str | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.binary_source = binary_source
        self.env = dict(os.environ if env is None else env)
        self.ports = tuple(ports)
        self.user = user
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.pid_file = data_dir / "run" / f"{name}.pid"
        self.log_path = data_dir / "logs" / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._record: PidRecord | None = None
        self._exit_seen: float | None = None
        self._stopped = False
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def record(self) -> PidRecord | None:
        """pid and start time of the child, once started."""
        return self._record

    def start(self) -> None:
        """Start the child; StartupError (one line) when its binary is missing or a port is taken.

        Once the child has died and stop() has cleared what it left, start() runs it again.
        """
        if self._proc is not None and not self._stopped:
            raise RuntimeError(f"{self.name} was started already; stop() it before starting it again")
        self._stopped = False
        self._exit_seen = None
        require_binary(self.argv[0], self.binary_source)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log = self.log_path.open("ab")
        try:
            stale = reap_stale(self.pid_file)
            if stale is not None:
                self._note(f"stopped pid {stale} left over from an earlier run")
            check_ports(self.ports)
            self._note(f"starting: {' '.join(self.argv)}")
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                **as_user(self.user),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise StartupError(
                f"{self.name} could not start {self.argv[0]}: {exc}; {REINSTALL_HINT}"
            ) from None
        except BaseException:
            log.close()
            raise
        self._record = PidRecord(self._proc.pid, psutil.Process(self._proc.pid).create_time())
        self._record.write(self.pid_file)

    def poll(self) -> int | None:
        """The exit code once the child has exited, else None."""
        code = self._proc.poll() if self._proc is not None else None
        if code is not None and self._exit_seen is None:
            self._exit_seen = time.time()
        return code

    def wait_ready(
        self,
        check: Callable[[], bool],
        timeout: float,
        *,
        abort: threading.Event | None = None,
        interval: float = 0.05,
    ) -> None:
        """Poll check() until true; StartupError if the child exits, the deadline passes or abort is set."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                raise StartupError(
                    f"{self.name} exited with code {code} while starting; {self.log_summary()}",
                    self.log_tail(),
                )
            try:
                if check():
                    return
            except Exception:  # a half-started server fails probes in any way; the deadline decides
                pass
            if abort is not None and abort.is_set():
                raise StartupError(f"{self.name}: start interrupted")
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"{self.name} was not ready within {timeout:g} s; {self.log_summary()}", self.log_tail()
                )
            time.sleep(interval)

    def stop(self, timeout: float | None = None) -> None:
        """Stop signal to the group, wait, then SIGKILL what is left of the group; idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None or self._stopped:
                return
            self._stopped = True
            died_before = proc.poll() is not None
            if not died_before:
                kill_group(proc.pid, self.stop_signal)
                try:
                    proc.wait(self.stop_timeout if timeout is None else timeout)
                except subprocess.TimeoutExpired:
                    self._note(f"did not stop within {self.stop_timeout:g} s; killing its process group")
                # Children of the leader may outlive it; the group id stays valid while any of them runs.
                kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            else:
                # It died on its own a while ago, so its pid (hence the group id) may belong to someone
                # else by now: kill only members of the group that were started before it died. Wait
                # for them, so a restart finds their ports and memory free: a killed postmaster's
                # backends keep its shared memory, and a new postmaster refuses to start beside them.
                kill_and_wait(group_members(proc.pid, started_before=self._exit_seen or time.time()))
            self.pid_file.unlink(missing_ok=True)
            if died_before:
                self._note(f"cleared what it left (it had exited with code {proc.returncode})")
            else:
                self._note(f"stopped (exit code {proc.returncode})")
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 16384))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def log_summary(self) -> str:
        """One line: the last line the child logged and where the whole log is."""
        tail = self.log_tail(1)
        last = f"last log line: {tail[0].strip()[:200]!r}; " if tail else ""
        return f"{last}see {self.log_path}"

    def _note(self, message: str) -> None:
        if self._log is not None and not self._log.closed:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            self._log.write(f"==== macp {stamp} {self.name}: {message}\n".encode())
            self._log.flush()
