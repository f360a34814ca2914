"""`macp up [--data-dir DIR] [--timeout S]`: the whole mesh on this machine, until Ctrl-C.

Order of start: infrastructure (Postgres, Redis, S3, then Kafka) and Envoy at once, then every
service and the edge at once; `macp up` reports ready when every service's gRPC health is
SERVING, the edge's /healthz answers 200 and Envoy's admin says LIVE. From then on it supervises:
a child that dies (an embedded part, Envoy, a service, the edge, the local provider server) is
restarted with backoff while the rest keep running, and stack.json records its restarts and last
exit for `macp status` (services/stack/supervisor.py). A child that dies while the stack starts,
or one that crash-loops (more than 5 deaths within 60 s), stops everything with exit code 1.
It stops in the opposite order (edge, services, Envoy, Kafka, S3, Redis, Postgres) on Ctrl-C or
SIGTERM (exit 0). Children run in their own process groups, so nothing is left behind; a
`macp up` that was itself killed leaves pid files that the next one cleans up.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from services.runtime.settings import Env, SettingsError
from services.stack import seed, stackfile
from services.stack.envoy import Envoy
from services.stack.parallel import run_parallel
from services.stack.part import redact
from services.stack.plan import AppSpec, StackPlan
from services.stack.probes import ProbeError, answers
from services.stack.process import ManagedProcess, StartupError, check_ports, reap_stale
from services.stack.replicas import MAX_REPLICAS, replica_settings
from services.stack.supervisor import Supervisor, restart_part, restart_process

DEFAULT_TIMEOUT_SECONDS = 60.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the stack keeps its data, logs and pid files (default: $MACP_DATA_DIR, else ./.macp)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"seconds to wait for every part to be ready (default: {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="[NAME=]COUNT",
        help=(
            "processes of every service and of the edge (COUNT), or of one of them (NAME=COUNT, "
            "e.g. edge=2 or agent-proxy=3); repeatable; the same as MACP_REPLICAS and "
            f"MACP_<NAME>_REPLICAS, which it overrides (at most {MAX_REPLICAS} each)"
        ),
    )


def run(args: argparse.Namespace) -> int:
    try:
        environ = dict(os.environ) | replica_settings(args.replicas)
        plan = StackPlan.from_environ(environ, data_dir_override=args.data_dir, ready_timeout=args.timeout)
    except SettingsError as exc:
        print(f"macp up: {exc}", file=sys.stderr)
        return 2
    return Launcher(plan).run()


class Launcher:
    """Starts a StackPlan, watches it, and stops all of it; one instance per `macp up`."""

    def __init__(self, plan: StackPlan, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.plan = plan
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.envoy: Envoy | None = None
        self.apps: list[tuple[AppSpec, ManagedProcess]] = []
        self.abort = threading.Event()
        self.signalled = False
        self.started_at = datetime.now(UTC)
        self.began = time.monotonic()
        self.ready_seconds: float | None = None
        self.seeded: seed.SeedReport | None = None
        self.supervisor = Supervisor(plan.restart_policy, self._say, self.abort)
        self._written: list[dict[str, Any]] = []  # the components stack.json holds now

    def run(self) -> int:
        """Start everything, wait for a signal or a death, stop everything; the exit code."""
        # SIGHUP too: closing the terminal should stop the stack, not orphan it.
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag: every wait in the launcher watches it, so start-up and the watch loop
        # both end promptly and the stopping happens in one place, in order.
        self.signalled = True
        self.abort.set()

    def _run(self) -> int:
        self.began = time.monotonic()
        try:
            self._start()
            self._seed()
        except (StartupError, SettingsError, OSError) as exc:
            self._stop()
            if self.signalled:
                self._say("interrupted before the stack was ready; stopped what had started")
                return 0
            self._fail(str(exc), exc.details if isinstance(exc, StartupError) else [])
            return 1
        except BaseException:
            self._stop()
            raise
        self._supervise()
        self._announce()
        code = self._watch()
        self._stop()
        return code

    # --- start -----------------------------------------------------------------------------

    def _start(self) -> None:
        plan = self.plan
        plan.data_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_if_running()
        self._reap_leftovers()
        check_ports(plan.claims())  # every port at once, before anything starts
        stackfile.write(plan.data_dir, self._document("starting"))
        self._say(f"starting the MACP stack (data in {plan.data_dir})")
        env = plan.child_env()
        config = plan.data_dir / "envoy" / "envoy.yaml"
        self.envoy = Envoy(plan.data_dir, config, plan.envoy_ports, log_level=plan.common.log_level)
        # Rendering Envoy's configuration costs seconds of CPU (envoy-data-plane's typed classes):
        # do it beside the infrastructure start rather than before it.
        run_parallel(
            [
                lambda: plan.infrastructure.start(progress=self._say, abort=self.abort),
                lambda: self._start_envoy(Env(env)),
            ],
            self.abort,
        )
        stackfile.write(plan.data_dir, self._document("starting"))  # status can see the pids so far
        self._start_apps(env)
        self.ready_seconds = time.monotonic() - self.began

    def _start_envoy(self, env: Env) -> None:
        assert self.envoy is not None
        began = time.monotonic()
        self.plan.render_envoy(self.envoy.config_path, env)
        self.envoy.start(self.abort)
        self._say(
            f"{'envoy':<9} ready  {self.envoy.url:<45} pid {self.envoy.pid}, {time.monotonic() - began:.1f} s"
        )

    def _start_apps(self, env: dict[str, str]) -> None:
        for app in self.plan.apps:
            process = ManagedProcess(
                app.name,
                app.argv,
                data_dir=self.plan.data_dir,
                binary_source="the Python interpreter",
                env=env | dict(app.own_env),
                ports=app.claims(),
                stop_timeout=self.plan.stop_timeout,
            )
            self.apps.append((app, process))
            process.start()
        stackfile.write(self.plan.data_dir, self._document("starting"))
        self._wait_apps()

    def _wait_apps(self) -> None:
        """Poll every app until all are ready; name all that are not when the deadline passes."""
        deadline = self.began + self.plan.ready_timeout
        pending = {app.name: (app, process) for app, process in self.apps}
        reasons: dict[str, str] = {}
        while True:
            for name, (app, process) in list(pending.items()):
                code = process.poll()
                if code is not None:
                    raise StartupError(
                        f"{name} exited with code {code} while starting; {process.log_summary()}",
                        process.log_tail(),
                    )
                try:
                    app.probe()
                except ProbeError as exc:
                    reasons[name] = str(exc)
                    continue
                del pending[name]
                waited = time.monotonic() - self.began
                self._say(
                    f"{name:<15} ready  {app.address:<39} pid {process.pid}, {waited:.1f} s since start"
                )
            if not pending:
                return
            if self.abort.is_set():
                raise StartupError("interrupted")
            if time.monotonic() >= deadline:
                waiting = ", ".join(f"{name} ({reasons.get(name, 'no answer')})" for name in pending)
                first = next(iter(pending.values()))[1]
                raise StartupError(
                    f"not ready within {self.plan.ready_timeout:g} s: {waiting}; see {first.log_path}",
                    first.log_tail(),
                )
            self.abort.wait(0.2)

    def _seed(self) -> None:
        """The local admin, tenant, user and CLI client (services/stack/seed.py), on every start."""
        assert self.envoy is not None
        if not any(app.argv[-2:] == ("-m", seed.TOKEN_MODULE) for app in self.plan.apps):
            return  # stand-in services (tests/stack/fake_up.py): no token service to seed
        token = self.plan.child_env().get("MACP_TOKEN_INITIAL_ACCESS_TOKEN", "")
        try:
            self.seeded = seed.seed(self.plan.data_dir, self.envoy.mesh_address, token)
        except seed.SeedError as exc:
            raise StartupError(str(exc)) from None

    def _refuse_if_running(self) -> None:
        document = stackfile.read(self.plan.data_dir)
        supervisor = document.get("supervisor") if document else None
        if stackfile.alive(supervisor) and supervisor and supervisor.get("pid") != os.getpid():
            raise StartupError(
                f"macp up already runs for {self.plan.data_dir} (pid {supervisor['pid']}); "
                "stop it first, or pass another --data-dir"
            )

    def _reap_leftovers(self) -> None:
        for pid_file in sorted((self.plan.data_dir / "run").glob("*.pid")):
            pid = reap_stale(pid_file)
            if pid is not None:
                self._say(f"stopped {pid_file.stem} (pid {pid}), left running by an earlier macp up")

    # --- run -------------------------------------------------------------------------------

    def _supervise(self) -> None:
        """Hand every child this `macp up` runs to the supervisor, each with how to run it again."""
        for part in self.plan.infrastructure.parts:
            if part.process is not None:  # embedded; a configured server is someone else's to run
                self.supervisor.add(part.name, part, restart_part(part))
        if self.envoy is not None and self.envoy.process is not None:
            self.supervisor.add(self.envoy.name, self.envoy, restart_part(self.envoy))
        for app, process in self.apps:
            ready = partial(answers, app.probe)
            self.supervisor.add(app.name, process, restart_process(process, ready, self.plan.ready_timeout))

    def _watch(self) -> int:
        """Restart what dies until a signal (exit 0) or a crash loop (exit 1)."""
        # A killed child must be running again within seconds: poll often (a poll is a waitpid).
        while not self.abort.wait(0.2):
            loop = self.supervisor.check()
            if loop is not None:
                self._fail(loop.message, loop.log_tail)
                self.abort.set()  # any restart in progress gives up; then everything stops
                return 1
            document = self._document("ready")
            if document["components"] != self._written:  # a restart, or a new pid: status sees it
                stackfile.write(self.plan.data_dir, document)
                self._written = document["components"]
        return 0

    def _announce(self) -> None:
        plan = self.plan
        document = self._document("ready")
        stackfile.write(plan.data_dir, document)
        self._written = document["components"]
        infra = plan.infrastructure
        assert self.envoy is not None
        rows = [
            ("front", f"{self.envoy.url}  (REST /v1, WebSocket /v1/ws, OAuth2 /oauth2)"),
            ("console", f"{self.envoy.url}/console/  (the web console: sign in as below)"),
            ("mesh", f"{self.envoy.mesh_address}  (gRPC, h2c)"),
            ("admin", self.envoy.admin_url),
            *(
                (app.name, app.address if app.kind == "service" else f"http://{app.address}")
                for app in plan.apps
            ),
            *((part.name, redact(part.url)) for part in infra.parts),
        ]
        self._say(f"MACP is up: every part ready in {self.ready_seconds:.1f} s")
        for name, where in rows:
            self._say(f"  {name:<13} {where}")
        if self.seeded is not None:
            admin = self.seeded.admin
            made = f" (created: {', '.join(self.seeded.created)})" if self.seeded.created else ""
            self._say(f"local tenant: {admin.tenant_id}; local admin user: {admin.username}{made}")
            self._say(
                f"log in: macp login --username {admin.username}  (password kept in "
                f"{seed.admin_file(plan.data_dir)}; or pipe one to --password-stdin)"
            )
            for warning in self.seeded.warnings:
                self._say(f"warning: {warning}")
        self._say(f"logs in {plan.data_dir / 'logs'}; `macp status` checks it; Ctrl-C stops it")

    # --- stop ------------------------------------------------------------------------------

    def _stop(self) -> None:
        """Edge, then services (together), then Envoy, then Kafka, S3, Redis, Postgres."""
        self.abort.set()  # a restart still in progress gives up, and none starts after this
        self.supervisor.join()
        if not (self.apps or self.envoy or any(p.process for p in self.plan.infrastructure.parts)):
            self._forget()
            return
        self._say("stopping: edge, services, envoy, kafka, s3, redis, postgres")
        edge = [process for app, process in self.apps if app.kind == "edge"]
        services = [process for app, process in self.apps if app.kind != "edge"]
        for process in edge:
            process.stop()
        if services:
            with ThreadPoolExecutor(max_workers=len(services), thread_name_prefix="macp-stop") as pool:
                list(pool.map(lambda process: process.stop(), services))
        if self.envoy is not None:
            self.envoy.stop()
        self.plan.infrastructure.stop()
        self._forget()
        self._say("stopped")

    def _forget(self) -> None:
        document = stackfile.read(self.plan.data_dir)
        supervisor = document.get("supervisor") if document else None
        if supervisor and supervisor.get("pid") == os.getpid():
            stackfile.remove(self.plan.data_dir)

    # --- output ----------------------------------------------------------------------------

    def _document(self, state: str) -> dict[str, Any]:
        components = [part.record() for part in self.plan.infrastructure.parts]
        if self.envoy is not None:
            components.append(self.envoy.record())
        for app, process in self.apps:
            record = process.record
            components.append(
                {
                    "name": app.name,
                    "kind": app.kind,
                    "service": app.service_name,
                    "replica": app.replica,
                    "pid": record.pid if record else None,
                    "create_time": record.create_time if record else None,
                    "url": app.address if app.kind == "service" else f"http://{app.address}",
                    "check": app.check_spec(),
                }
            )
        components = [component | self.supervisor.record(component["name"]) for component in components]
        return {
            "state": state,
            "supervisor": stackfile.this_process(),
            "data_dir": str(self.plan.data_dir),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "ready_seconds": None if self.ready_seconds is None else round(self.ready_seconds, 2),
            "components": components,
            "endpoints": {}
            if self.envoy is None
            else {"front": self.envoy.url, "mesh": self.envoy.mesh_address},
        }

    def _say(self, line: str) -> None:
        print(f"macp up: {line}", file=self.out, flush=True)

    def _fail(self, line: str, details: list[str]) -> None:
        print(f"macp up: {line}", file=self.err, flush=True)
        for detail in details[-15:]:
            print(f"    | {detail}", file=self.err, flush=True)
