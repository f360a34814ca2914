"""The stack under chaos: `macp up` as users run it, its parts found in stack.json, killed by pid.

`running_stack` starts the real console script (`macp up --data-dir <scratch>`) on free ports, as
bench/macp_up.py does, with settings that keep the run about crashes rather than limits: rate
limits far above the load, access tokens that outlive the run, an event log that is never
trimmed. It yields a `Stack` that signs in as the seeded admin, creates one-agent conversations
over REST, kills a part with SIGKILL and watches stack.json for the supervisor's restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.macp_up import macp_command, stack_environ
from bench.orchestrator import _pro_plan as pro_plan
from bench.slice import sign_in
from services.runtime.registry import EDGE, SERVICES
from services.stack import seed, stackfile
from services.stack.infra import scratch_data_dir
from services.stack.process import PidRecord, terminate_tree

# The ten process kinds of the issue, by their stack.json names (the agent proxy's is hyphenated).
KINDS: tuple[str, ...] = (
    "orchestrator",
    "conversation",
    "agent-proxy",
    "metering",
    "token",
    "edge",
    "envoy",
    "redis",
    "kafka",
    "postgres",
)
MODEL = "echo-1"  # the local provider server's natural short answers
UP_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.05

# What the chaos run changes from the defaults, and why: the clients' frames must never be
# refused for rate (that would read as an outage), a token must not expire mid-run (the clients
# do sign in again on 4401, but that is not what is measured), and the full log read at the end
# must still hold the first event of every conversation (the default keeps 10,000 per
# conversation, which a long run passes).
CHAOS_SETTINGS: dict[str, str] = {
    "MACP_RATE_LIMIT_API": "1000000/s",
    "MACP_RATE_LIMIT_INTERNAL": "1000000/s",
    "MACP_RATE_LIMIT_TENANT": "1000000/s",
    "MACP_TOKEN_ACCESS_TOKEN_SECONDS": "7200",
    "MACP_ORCHESTRATOR_MAX_EVENTS": "1000000",
    "MACP_LOG_LEVEL": "warning",
    # The example MCP servers are no part under test here.
    "MACP_EXAMPLE_TOOLS": "off",
}


class ChaosError(Exception):
    """The stack did not start, or could not be set up for the run."""


# What runs in replicas (`macp up --replicas`): every service and the edge, each replica named
# `<kind>-<k>` in stack.json (services/stack/replicas.py).
REPLICATED_KINDS: tuple[str, ...] = (*(spec.name for spec in SERVICES), EDGE.name)


def replica_kinds(replicas: int) -> tuple[str, ...]:
    """Every replica of every service and of the edge, in the registry's order: the kill sequence
    that SIGKILLs each replica once, one at a time."""
    return tuple(f"{kind}-{index}" for kind in REPLICATED_KINDS for index in range(1, replicas + 1))


def canonical_kind(name: str, replicas: int = 1) -> str:
    """A kind as stack.json names it (`agent_proxy` is accepted for `agent-proxy`); with replicas,
    a service's or the edge's replica (`orchestrator-2`)."""
    kind = name.strip().replace("_", "-")
    known = KINDS
    if replicas > 1:
        known = (*(k for k in KINDS if k not in REPLICATED_KINDS), *replica_kinds(replicas))
    if kind not in known:
        raise ValueError(f"unknown kind {name!r}; one of {', '.join(known)}")
    return kind


@dataclass(frozen=True)
class Kill:
    """One SIGKILL: which part, which pid, when (wall clock, comparable with event times)."""

    kind: str
    pid: int
    at: float


@dataclass
class Stack:
    """A running `macp up` and what the harness needs of it."""

    data_dir: Path
    process: subprocess.Popen[str]
    log_path: Path
    front_url: str
    postgres_url: str
    redis_url: str
    admin: seed.LocalAdmin
    # Every (pid, start time) stack.json ever named: what to stop if `macp up` leaves any behind.
    seen: set[PidRecord] = field(default_factory=set)

    def edge_connections(self) -> dict[str, int]:
        """Open connections from Envoy to each edge replica (its admin /clusters `cx_active`): each
        WebSocket holds one, so this is how the clients spread over the edges."""
        envoy = self.component("envoy") or {}
        admin_port = envoy.get("check", {}).get("admin_port")
        if admin_port is None:
            raise ChaosError("stack.json names no Envoy admin port")
        by_address = {
            f"127.0.0.1:{entry['url'].rsplit(':', 1)[-1]}": entry["name"]
            for entry in self.document().get("components", [])
            if entry.get("kind") == "edge"
        }
        text = httpx.get(f"http://127.0.0.1:{admin_port}/clusters", timeout=5, trust_env=False).text
        counts: dict[str, int] = {}
        for line in text.splitlines():
            cluster, _, rest = line.partition("::")
            address, _, stat = rest.partition("::")
            if cluster == EDGE.name and stat.startswith("cx_active::") and address in by_address:
                counts[by_address[address]] = int(stat.rsplit("::", 1)[-1])
        return counts

    @property
    def ws_base(self) -> str:
        return self.front_url.replace("http://", "ws://") + "/v1/ws"

    def up(self) -> bool:
        """The supervisor still runs."""
        return self.process.poll() is None

    def document(self) -> dict[str, Any]:
        document = stackfile.read(self.data_dir) or {}
        for entry in [document.get("supervisor"), *document.get("components", [])]:
            if entry and entry.get("pid") is not None and entry.get("create_time") is not None:
                self.seen.add(PidRecord(int(entry["pid"]), float(entry["create_time"])))
        return document

    def component(self, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.document().get("components", []) if c.get("name") == kind), None)

    def record_of(self, kind: str) -> tuple[int | None, int | None]:
        """The part's pid and, once the supervisor records one, its restart count."""
        entry = self.component(kind) or {}
        pid = entry.get("pid")
        restarts = entry.get("restarts")
        return (int(pid) if pid is not None else None), (int(restarts) if restarts is not None else None)

    def kill(self, kind: str) -> Kill:
        pid, _ = self.record_of(kind)
        if pid is None:
            raise ChaosError(f"stack.json names no pid for {kind}")
        at = time.time()
        os.kill(pid, signal.SIGKILL)
        return Kill(kind, pid, at)

    def wait_restart(self, kill: Kill, timeout: float) -> float | None:
        """Seconds from the kill until stack.json names a new, living pid for the part (or a higher
        restart count with a living pid) in state `running` (the supervisor writes that once the
        part is ready again); None when that did not happen within `timeout` or the supervisor
        itself exited."""
        deadline = kill.at + timeout
        _, restarts_before = self.record_of(kill.kind)
        while time.time() < deadline and self.up():
            entry = self.component(kill.kind) or {}
            pid = entry.get("pid")
            restarts = entry.get("restarts")
            moved = pid is not None and int(pid) != kill.pid
            counted = restarts is not None and restarts_before is not None and restarts > restarts_before
            running = entry.get("state") in (None, "running")
            if (moved or counted) and running and pid is not None and _alive(entry):
                return time.time() - kill.at
            time.sleep(POLL_SECONDS)
        return None

    def sign_in(self) -> str:
        """A fresh access token of the seeded admin for the edge (blocking)."""
        return sign_in(self.front_url, self.admin)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    | {line}" for line in text[-lines:])

    def create_conversations(self, token: str, count: int) -> list[str]:
        """One agent (the local provider's echo model) and `count` conversations with it, each
        limited to one agent turn per user message: a round is exactly one turn."""
        with httpx.Client(
            base_url=self.front_url,
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
            trust_env=False,
        ) as http:
            agent = http.post("/v1/agents", json={"name": "Chaos", "provider": "local", "model": MODEL})
            if agent.status_code != 201:
                raise ChaosError(f"creating the agent failed: {agent.status_code} {agent.text}")
            ids = []
            for _ in range(count):
                created = http.post(
                    "/v1/conversations",
                    json={
                        "participantAgentIds": [agent.json()["id"]],
                        "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
                        "limits": {"maxAgentTurnsPerUserMessage": 1},
                    },
                )
                if created.status_code != 201:
                    raise ChaosError(f"creating a conversation failed: {created.status_code} {created.text}")
                ids.append(str(created.json()["id"]))
            return ids


def _alive(entry: Mapping[str, Any]) -> bool:
    if entry.get("create_time") is None:
        try:
            os.kill(int(entry["pid"]), 0)
        except OSError:
            return False
        return True
    return stackfile.alive(dict(entry))


def _wait_ready(process: subprocess.Popen[str], data_dir: Path, log_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + UP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        document = stackfile.read(data_dir)
        if document and document.get("state") == "ready":
            return document
        if process.poll() is not None:
            raise ChaosError(f"macp up exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    raise ChaosError(
        f"macp up was not ready within {UP_TIMEOUT_SECONDS:g} s:\n{log_path.read_text()[-3000:]}"
    )


def _url_of(document: Mapping[str, Any], name: str) -> str:
    for component in document.get("components", []):
        if component.get("name") == name and component.get("url"):
            return str(component["url"])
    raise ChaosError(f"stack.json names no url for {name}")


@contextmanager
def running_stack(
    progress: Callable[[str], None], keep_logs: Path | None = None, replicas: int = 1
) -> Iterator[Stack]:
    """`macp up` on a scratch data dir until the block ends; then SIGTERM, and nothing left.
    keep_logs: where to copy every part's log (and `macp up`'s own output) before the data dir
    goes, for whoever looks into a failed run. replicas: processes of every service and the edge."""
    with scratch_data_dir("macp-chaos-") as base:
        data_dir = base / "data"
        log_path = base / "up.out"
        environ = stack_environ(os.environ, replicas) | CHAOS_SETTINGS
        argv = [*macp_command(), "up", "--data-dir", str(data_dir), "--timeout", f"{UP_TIMEOUT_SECONDS:g}"]
        with log_path.open("w") as out:
            process = subprocess.Popen(argv, env=environ, stdout=out, stderr=subprocess.STDOUT, text=True)
        stack: Stack | None = None
        try:
            began = time.monotonic()
            document = _wait_ready(process, data_dir, log_path)
            progress(f"macp up ready in {time.monotonic() - began:.1f} s")
            admin = seed.load(data_dir)
            if admin is None:
                raise ChaosError("macp up is ready but seeded no local admin")
            stack = Stack(
                data_dir=data_dir,
                process=process,
                log_path=log_path,
                front_url=str(document["endpoints"]["front"]),
                postgres_url=_url_of(document, "postgres"),
                redis_url=_url_of(document, "redis"),
                admin=admin,
            )
            stack.document()
            # The seeded tenant is on the FREE plan, whose hard limit (50 orchestrations a month)
            # the load passes in seconds: PRO, as bench/orchestrator.py does, never refuses.
            secrets = json.loads((data_dir / "secrets.json").read_text())
            asyncio.run(
                pro_plan(
                    str(document["endpoints"]["mesh"]),
                    admin.tenant_id,
                    secrets["MACP_TOKEN_INITIAL_ACCESS_TOKEN"],
                )
            )
            yield stack
        finally:
            _stop(process, stack)
            if keep_logs is not None:
                shutil.copytree(data_dir / "logs", keep_logs, dirs_exist_ok=True)
                shutil.copy(log_path, keep_logs / "macp-up.out")


def _stop(process: subprocess.Popen[str], stack: Stack | None) -> None:
    # SIGTERM lets the supervisor stop its children in order; a SIGKILL would orphan them.
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if stack is not None:
        for record in stack.seen:
            proc = record.process()
            if proc is not None:
                terminate_tree(proc, 5.0)
