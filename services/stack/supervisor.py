"""Keeps `macp up`'s children running: a child that dies is started again, the rest run on.

Once the stack is ready, `macp up` polls every child it runs (the embedded Postgres, Redis, S3
and Kafka, Envoy, every service, the edge and the local provider server) several times a
second. A child that died is restarted on a thread of its own, so a slow recovery (Postgres
replaying its WAL after a SIGKILL) holds up no other child:

- backoff: the first restart at once, then 0.5 s, 1 s, 2 s ... up to BACKOFF_MAX_SECONDS; a child
  that has stayed up STABLE_SECONDS since its last restart starts again from "at once";
- a restart is done when the child is ready again by the same check `macp up` waited for at
  start (gRPC SERVING, /healthz, Envoy LIVE, a Postgres query...); one that fails to start, or is
  not ready in time, counts as another death;
- crash loop: a child that dies more than `limit` times within `window` seconds (5 in 60 s;
  MACP_STACK_RESTART_LIMIT, MACP_STACK_RESTART_WINDOW_SECONDS) is not restarted again: the check
  reports it, and `macp up` stops the whole stack and exits 1 naming it, its last exit code and
  its last log lines.

Each death and each return is said on `macp up`'s stdout and written into the child's own log;
`record()` gives the restart count, last exit code and time and the state ("running" or
"restarting") that stack.json keeps for `macp status`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from services.runtime.settings import Env
from services.stack.process import ManagedProcess, StartupError, append_note

RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 60.0
BACKOFF_FIRST_SECONDS = 0.5  # the second restart's delay; the first one is at once
BACKOFF_MAX_SECONDS = 5.0
STABLE_SECONDS = 30.0


@dataclass(frozen=True)
class RestartPolicy:
    """How often a child may be restarted, and how long to wait before each restart."""

    limit: int = RESTART_LIMIT
    window: float = RESTART_WINDOW_SECONDS
    backoff_first: float = BACKOFF_FIRST_SECONDS
    backoff_max: float = BACKOFF_MAX_SECONDS
    stable: float = STABLE_SECONDS

    @classmethod
    def from_env(cls, env: Env) -> RestartPolicy:
        return cls(
            limit=env.integer("MACP_STACK_RESTART_LIMIT", RESTART_LIMIT, minimum=0),
            window=env.number("MACP_STACK_RESTART_WINDOW_SECONDS", RESTART_WINDOW_SECONDS, minimum=1.0),
        )

    def delay(self, streak: int) -> float:
        """Seconds before the streak-th restart since the child last stayed up (1: at once)."""
        if streak <= 1:
            return 0.0
        return float(min(self.backoff_max, self.backoff_first * 2 ** (streak - 2)))


@dataclass(frozen=True)
class CrashLoop:
    """A child that died too often: what `macp up` says when it stops the stack for it."""

    name: str
    exit_code: int | None
    deaths: int
    window: float
    reason: str
    log_tail: list[str]
    log_path: str

    @property
    def message(self) -> str:
        code = "no exit code" if self.exit_code is None else f"last exit code {self.exit_code}"
        return (
            f"{self.name} is crash-looping: it died {self.deaths} time{'s' if self.deaths != 1 else ''} "
            f"within {self.window:g} s "
            f"({code}; last: {self.reason}); stopping everything; see {self.log_path}"
        )


class Holder(Protocol):
    """An embedded part or Envoy: each start makes a new ManagedProcess, held here."""

    process: ManagedProcess | None


@dataclass
class Child:
    """One supervised child: where its process is, how to run it again, and its history."""

    name: str
    holder: Holder | ManagedProcess  # an app's process is the same object across restarts
    relaunch: Callable[[threading.Event], None]  # clear the dead process, start again, return when ready
    state: str = "running"  # running | waiting (for its backoff) | restarting
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_at: datetime | None = None
    streak: int = 0  # restarts since the child last stayed up STABLE_SECONDS
    up_since: float = field(default_factory=time.monotonic)
    died_at: float = 0.0
    due: float = 0.0
    deaths: deque[float] = field(default_factory=deque)
    thread: threading.Thread | None = None
    failure: str | None = None  # why the last relaunch failed, set by its thread

    def process(self) -> ManagedProcess | None:
        return self.holder if isinstance(self.holder, ManagedProcess) else self.holder.process

    def record(self) -> dict[str, Any]:
        return {
            "state": "running" if self.state == "running" else "restarting",
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "last_exit_at": None
            if self.last_exit_at is None
            else self.last_exit_at.isoformat(timespec="seconds"),
        }


class Supervisor:
    """The children of one `macp up` and their restarts; check() is called from one thread only."""

    def __init__(self, policy: RestartPolicy, say: Callable[[str], None], abort: threading.Event) -> None:
        self.policy = policy
        self.say = say
        self.abort = abort  # set when the stack stops: a restart in progress gives up
        self.children: dict[str, Child] = {}

    def add(
        self, name: str, holder: Holder | ManagedProcess, relaunch: Callable[[threading.Event], None]
    ) -> None:
        self.children[name] = Child(name, holder, relaunch)

    def record(self, name: str) -> dict[str, Any]:
        """What stack.json keeps of a child's supervision (nothing for one not supervised)."""
        child = self.children.get(name)
        return {} if child is None else child.record()

    def check(self) -> CrashLoop | None:
        """Notice deaths, start due restarts, finish done ones; a CrashLoop means stop everything."""
        now = time.monotonic()
        for child in self.children.values():
            if child.state == "running":
                process = child.process()
                code = process.poll() if process is not None else None
                if code is not None:
                    loop = self._died(child, code, f"exited with code {code}", now)
                    if loop is not None:
                        return loop
                elif child.streak and now - child.up_since >= self.policy.stable:
                    child.streak = 0  # it stayed up: the next death is restarted at once again
            elif child.state == "waiting" and now >= child.due:
                self._relaunch(child)
            elif child.state == "restarting" and child.thread is not None and not child.thread.is_alive():
                loop = self._relaunched(child, now)
                if loop is not None:
                    return loop
        return None

    def join(self) -> None:
        """Wait for the restarts in progress; the caller has set `abort`, so each ends promptly."""
        for child in self.children.values():
            if child.thread is not None:
                child.thread.join()

    # --- one child's life --------------------------------------------------------------------

    def _died(self, child: Child, code: int | None, reason: str, now: float) -> CrashLoop | None:
        child.last_exit_code = code if code is not None else child.last_exit_code
        child.last_exit_at = datetime.now(UTC)
        child.died_at = now
        child.deaths.append(now)
        while child.deaths and now - child.deaths[0] > self.policy.window:
            child.deaths.popleft()
        process = child.process()
        if len(child.deaths) > self.policy.limit:
            return CrashLoop(
                name=child.name,
                exit_code=child.last_exit_code,
                deaths=len(child.deaths),
                window=self.policy.window,
                reason=reason,
                log_tail=process.log_tail(15) if process is not None else [],
                log_path=str(process.log_path) if process is not None else "its log",
            )
        child.streak += 1
        child.restarts += 1
        delay = self.policy.delay(child.streak)
        child.state = "waiting"
        child.due = now + delay
        after = f" in {delay:g} s" if delay else ""
        line = f"{reason}; restarting (restart {child.restarts}){after} ..."
        self.say(f"{child.name} {line}")
        if process is not None:
            append_note(process.log_path, child.name, line)
        return None

    def _relaunch(self, child: Child) -> None:
        child.state = "restarting"
        child.failure = None

        def relaunch() -> None:
            try:
                child.relaunch(self.abort)
            except StartupError as exc:
                child.failure = str(exc)
            except Exception as exc:
                child.failure = f"{type(exc).__name__}: {exc}"

        child.thread = threading.Thread(target=relaunch, name=f"macp-restart-{child.name}", daemon=True)
        child.thread.start()

    def _relaunched(self, child: Child, now: float) -> CrashLoop | None:
        child.thread = None
        if self.abort.is_set():
            return None  # the stack is stopping; its stop clears whatever this restart left
        process = child.process()
        if child.failure is not None:
            code = process.poll() if process is not None else None
            return self._died(child, code, f"failed to start again ({child.failure})", now)
        child.state = "running"
        child.up_since = now
        line = f"ready again in {now - child.died_at:.1f} s" + (
            f" (pid {process.pid})" if process is not None else ""
        )
        self.say(f"{child.name} {line}")
        if process is not None:
            append_note(process.log_path, child.name, line)
        return None


class Restartable(Protocol):
    """An embedded part or Envoy: start() makes a new process and returns once it is ready."""

    process: ManagedProcess | None

    def stop(self) -> None: ...
    def start(self, abort: threading.Event | None = None) -> None: ...


def restart_part(part: Restartable) -> Callable[[threading.Event], None]:
    """An embedded part's or Envoy's restart: clear what its dead process left (a postmaster's
    orphaned backends), then start it anew, ready as at start: Postgres after its crash recovery,
    Redis after reading its AOF back, tansu after reading its log from S3."""

    def restart(abort: threading.Event) -> None:
        part.stop()
        part.start(abort)

    return restart


def restart_process(
    process: ManagedProcess, ready: Callable[[], bool], timeout: float
) -> Callable[[threading.Event], None]:
    """A service's, the edge's or the provider server's restart: the same command again, ready once
    its health check passes, as at start."""

    def restart(abort: threading.Event) -> None:
        process.stop()
        process.start()
        process.wait_ready(ready, timeout, abort=abort, interval=0.1)

    return restart
