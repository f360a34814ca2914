"""`macp status [--data-dir DIR]`: what the native stack runs, and whether each part is healthy.

Reads `<data_dir>/run/stack.json` (written by `macp up`), checks that each recorded process is
still the one `macp up` started, and probes each part the way `macp up` did: gRPC health for
services, /healthz for the edge, Envoy's admin /ready, and each infrastructure part's own
protocol (TCP only for a configured server). RESTARTS and LAST EXIT say how often `macp up` has
restarted a part and how it last died; a part being restarted shows as `restarting`. A service run
in several processes (`macp up --replicas`) has a row per replica (`orchestrator-1`, ...) and a
last line counting how many of each serve. Exit 0: all
healthy; 1: something is not (a part restarting included); 3: nothing runs.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.runtime.settings import Env, SettingsError, data_dir
from services.stack import stackfile
from services.stack.kafka import split_address
from services.stack.probes import (
    ProbeError,
    envoy_ready,
    grpc_serving,
    http_ok,
    kafka_metadata,
    postgres_query,
    redis_ping,
    tcp,
)

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_NOT_RUNNING = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the data dir `macp up` used (default: $MACP_DATA_DIR, else ./.macp)",
    )


def run_check(check: dict[str, Any]) -> None:
    """Run the probe a stack.json `check` entry describes; ProbeError when it fails."""
    kind = check.get("type")
    if kind == "grpc":
        grpc_serving(check["address"])
    elif kind == "http":
        http_ok(check["url"])
    elif kind == "envoy":
        envoy_ready(int(check["admin_port"]))
    elif kind == "postgres":
        postgres_query(check["url"])
    elif kind == "redis":
        redis_ping(check["url"])
    elif kind == "kafka":
        kafka_metadata(*split_address(check["url"]))
    elif kind == "s3":
        http_ok(check["url"].rstrip("/") + "/")  # moto answers an unsigned ListBuckets
    elif kind == "tcp":
        tcp(check["host"], int(check["port"]))
    elif kind != "none":
        raise ProbeError(f"unknown check {kind!r}")


def component_state(component: dict[str, Any]) -> tuple[bool, str, str]:
    """(healthy, process state, health) of one stack.json component."""
    external = component.get("external", False)
    if component.get("state") == "restarting":
        return False, "restarting", "macp up is restarting it"
    if not external and component.get("pid") is None:
        return False, "starting", "-"
    if not external and not stackfile.alive(component):
        return False, "gone", "-"
    try:
        run_check(component.get("check", {}))
    except ProbeError as exc:
        return False, "external" if external else "running", str(exc)
    return True, "external" if external else "running", "ok"


def last_exit(component: dict[str, Any]) -> str:
    """`-9 at 12:03:04` (the exit code and the UTC time of the last death), or `-`."""
    code, when = component.get("last_exit_code"), component.get("last_exit_at")
    if code is None and when is None:
        return "-"
    at = f" at {when[11:19]}" if isinstance(when, str) and len(when) >= 19 else ""
    return f"{'?' if code is None else code}{at}"


def replica_lines(components: list[dict[str, Any]], healthy: list[bool]) -> list[str]:
    """`replicas: orchestrator 2/2 ok, edge 1/2 ok` for the services `macp up` runs in more than
    one process (nothing when each runs alone): how much of each is serving, at a glance."""
    counts: dict[str, list[int]] = {}
    for component, ok in zip(components, healthy, strict=True):
        service = component.get("service")
        if service is None or component.get("name") == service:
            continue  # infrastructure, or a service that runs alone
        tally = counts.setdefault(str(service), [0, 0])
        tally[0] += int(ok)
        tally[1] += 1
    if not counts:
        return []
    return ["replicas: " + ", ".join(f"{name} {ok}/{total} ok" for name, (ok, total) in counts.items())]


def run(args: argparse.Namespace) -> int:
    try:
        directory = args.data_dir.expanduser().resolve() if args.data_dir else data_dir(Env())
    except SettingsError as exc:
        print(f"macp status: {exc}", file=sys.stderr)
        return 2
    document = stackfile.read(directory)
    if document is None:
        print(f"nothing runs: no {stackfile.stack_file(directory)} (start the stack with `macp up`)")
        return EXIT_NOT_RUNNING
    components: list[dict[str, Any]] = document.get("components", [])
    supervisor = document.get("supervisor")
    supervisor_alive = stackfile.alive(supervisor)
    with ThreadPoolExecutor(max_workers=max(1, len(components))) as pool:
        states = list(pool.map(component_state, components))
    if not supervisor_alive and not any(state == "running" for _, state, _ in states):
        print(f"nothing runs: {stackfile.stack_file(directory)} is left from a macp up that has stopped")
        return EXIT_NOT_RUNNING

    pid = supervisor.get("pid") if supervisor else None
    stage = document.get("state", "?")
    print(f"macp up (pid {pid}): {'running, ' + stage if supervisor_alive else 'GONE'}; data in {directory}")
    print(
        f"{'NAME':<15} {'KIND':<8} {'PID':>8}  {'PROCESS':<10} {'HEALTH':<7} {'RESTARTS':>8}  "
        f"{'LAST EXIT':<14} ADDRESS"
    )
    for component, (healthy, state, health) in zip(components, states, strict=True):
        pid_text = str(component.get("pid") or "-")
        verdict = "ok" if healthy else "FAIL"
        restarts = str(component.get("restarts", 0))
        kind = component.get("kind", "?")
        print(
            f"{component['name']:<15} {kind:<8} {pid_text:>8}  {state:<10} {verdict:<7} "
            f"{restarts:>8}  {last_exit(component):<14} {component.get('url', '')}"
            + ("" if healthy else f"  ({health})")
        )
    for line in replica_lines(components, [healthy for healthy, _, _ in states]):
        print(line)
    if not supervisor_alive:
        print("macp up is gone but some of its children run: run `macp up` again to clean them up")
    all_healthy = supervisor_alive and stage == "ready" and all(healthy for healthy, _, _ in states)
    return EXIT_HEALTHY if all_healthy else EXIT_UNHEALTHY
