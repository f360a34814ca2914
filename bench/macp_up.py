"""`python -m bench.macp_up --runs N`: how long `macp up` takes until every part is ready.

Each run starts `macp up` (the console script users run) on free ports, first on a fresh data dir
(initdb included) and then again on the same, now warm, data dir. It times the spawn, each line of
stdout as it arrives, and the "MACP is up: every part ready in X s" line; reads the pids from
`<data_dir>/run/stack.json` while the stack is up; sends SIGTERM; and checks that every one of
those processes is gone once `macp up` has exited.

The raw baselines run in the same loop, so that their times drift with the machine exactly as ours
do: the bare infrastructure (`start_infrastructure` on a fresh dir, what `macp up` cannot do
faster than) and bare Python processes that only `import grpc`, as many as `macp up` starts.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.stats import Spread, machine_line, markdown_table
from services.runtime.registry import EDGE, SERVICES
from services.runtime.settings import Env
from services.stack import stackfile
from services.stack.config import FREE_PORTS_ENV, EnvoyPorts, free_ports_in_a_row
from services.stack.infra import scratch_data_dir, start_infrastructure
from services.stack.plan import app_specs
from services.stack.process import PidRecord, StartupError, terminate_tree
from services.stack.replicas import ALL_REPLICAS_VARIABLE, PORT_STEP_VARIABLE

TARGET_SECONDS = 20.0
UP_TIMEOUT_SECONDS = 90.0  # passed to `macp up --timeout` too; a run not up by then failed
STOP_TIMEOUT_SECONDS = 45.0  # macp up's own worst case is each service's grace (10 s) plus 5 s, in order
UP_LINE = re.compile(r"MACP is up: every part ready in ([0-9.]+) s")
# `macp up: postgres  ready  ...`: the lines of the first phase (infrastructure and Envoy).
# `macp up: postgres  ready  ...`: the lines of the first phase (infrastructure and Envoy), each
# ending in how long that part took itself, which dates when the phase began.
FIRST_PHASE_LINE = re.compile(r"^macp up: (envoy|postgres|redis|s3|kafka)\s+ready\b.*, ([0-9.]+) s$")


class BenchError(Exception):
    """A run did not do what it must (not up in time, a non-zero exit, a process left behind)."""


@dataclass(frozen=True)
class UpRun:
    """One `macp up`, every time in seconds from the spawn unless named otherwise."""

    first_line: float
    first_phase_began: float
    first_phase: float
    reported: float
    up: float
    stop: float
    pids: int
    cpu: float  # CPU seconds of macp up and every process it started, spawn → exit


@dataclass(frozen=True)
class Timed:
    """A baseline: wall seconds, and the CPU seconds (user + system) of every process involved."""

    wall: float
    cpu: float


def children_cpu() -> float:
    """CPU seconds of every child (and their reaped descendants) this process has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stack_environ(base: Mapping[str, str], replicas: int = 1) -> dict[str, str]:
    """The caller's environment without any MACP_ setting, every port free (names from the plan).
    With `replicas` above 1, every service and the edge run that many processes, each port of the
    first followed by free ones for the others (MACP_REPLICA_PORT_STEP=1)."""
    environ = {name: value for name, value in base.items() if not name.startswith("MACP_")}
    environ.update(FREE_PORTS_ENV)
    defaults = Env({})
    replicas_of = [app for app in app_specs(defaults) if app.kind in ("service", "edge")]
    replicated = {claim.variable for app in replicas_of for claim in app.claims()}
    variables = [claim.variable for claim in EnvoyPorts.from_env(defaults).claims()]
    variables += [claim.variable for app in app_specs(defaults) for claim in app.claims()]
    used: set[int] = set()
    for variable in variables:
        run = replicas if variable in replicated else 1
        port = free_ports_in_a_row(run, avoid=used)
        used.update(range(port, port + run))
        environ[variable] = str(port)
    if replicas > 1:
        environ |= {ALL_REPLICAS_VARIABLE: str(replicas), PORT_STEP_VARIABLE: "1"}
    return environ


def macp_command() -> list[str]:
    """The `macp` console script of this interpreter's environment, as a user runs it."""
    script = Path(sys.executable).parent / "macp"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "services.cli.main"]


@dataclass
class Transcript:
    """stdout (and stderr) of a child, each line with when it arrived; read on a thread."""

    began: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    up: threading.Event = field(default_factory=threading.Event)

    def read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.append((time.monotonic() - self.began, line.rstrip("\n")))
            if UP_LINE.search(line):
                self.up.set()
        self.up.set()  # end of output: whoever waits must look, not wait out the timeout

    def first(self, pattern: re.Pattern[str]) -> tuple[float, re.Match[str]] | None:
        for at, line in self.lines:
            match = pattern.search(line)
            if match:
                return at, match
        return None

    def first_phase(self) -> tuple[float, float]:
        """When the first phase began (its earliest part's line less that part's own time) and ended."""
        parts = [
            (at, float(match.group(2))) for at, line in self.lines if (match := FIRST_PHASE_LINE.search(line))
        ]
        if not parts:
            return math.nan, math.nan
        return min(at - took for at, took in parts), max(at for at, _ in parts)

    def tail(self, count: int = 15) -> str:
        return "\n".join(f"    | {line}" for _, line in self.lines[-count:])


def _live_records(data_dir: Path) -> list[PidRecord]:
    """The supervisor and every component with a pid, as `macp up` wrote them down."""
    document = stackfile.read(data_dir)
    if document is None:
        raise BenchError(f"macp up said it was up but {stackfile.stack_file(data_dir)} is missing")
    entries = [document.get("supervisor"), *document.get("components", [])]
    return [
        PidRecord(int(entry["pid"]), float(entry["create_time"]))
        for entry in entries
        if entry and entry.get("pid") is not None and entry.get("create_time") is not None
    ]


def _stop_left_behind(records: Sequence[PidRecord]) -> list[int]:
    """Stop (by pid and start time) whatever this run started and left running; their pids."""
    left = [(record, proc) for record in records if (proc := record.process()) is not None]
    for _, proc in left:
        terminate_tree(proc, 5.0)
    return [record.pid for record, _ in left]


def measure_up(data_dir: Path) -> UpRun:
    """One `macp up` on data_dir: spawn, wait for the up line, SIGTERM, check nothing is left."""
    environ = stack_environ(os.environ)
    argv = [*macp_command(), "up", "--data-dir", str(data_dir), "--timeout", f"{UP_TIMEOUT_SECONDS:g}"]
    cpu_before = children_cpu()
    transcript = Transcript(began=time.monotonic())
    child = subprocess.Popen(
        argv, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert child.stdout is not None
    reader = threading.Thread(
        target=transcript.read, args=(child.stdout,), name="macp-up-stdout", daemon=True
    )
    reader.start()
    records: list[PidRecord] = []
    try:
        transcript.up.wait(UP_TIMEOUT_SECONDS + 10)
        up = transcript.first(UP_LINE)
        if up is None:
            code = child.poll()
            state = "is still starting" if code is None else f"exited with code {code}"
            raise BenchError(f"macp up {state} and never said it was up:\n{transcript.tail()}")
        records = _live_records(data_dir)
        stop_began = time.monotonic()
        child.send_signal(signal.SIGTERM)
        code = child.wait(STOP_TIMEOUT_SECONDS)
        stopped = time.monotonic() - stop_began
        cpu = children_cpu() - cpu_before
        reader.join(5)
        left = _stop_left_behind(records)
        if code != 0 or left:
            raise BenchError(
                f"after SIGTERM macp up exited with code {code} and left pids {left} running:\n"
                + transcript.tail()
            )
        first_phase_began, first_phase = transcript.first_phase()
        return UpRun(
            first_line=transcript.lines[0][0],
            first_phase_began=first_phase_began,
            first_phase=first_phase,
            reported=float(up[1].group(1)),
            up=up[0],
            stop=stopped,
            pids=len(records),
            cpu=cpu,
        )
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        _stop_left_behind(records or _records_if_any(data_dir))


def _records_if_any(data_dir: Path) -> list[PidRecord]:
    try:
        return _live_records(data_dir)
    except BenchError:
        return []


def measure_infrastructure() -> Timed:
    """Baseline: the raw infrastructure `macp up` runs (Kafka on S3, as there), on a fresh dir.

    Wall time is the start; CPU covers start and stop (the parts are children of this process, which
    also runs the start-up threads), like the CPU of a `macp up` run.
    """
    with scratch_data_dir("macp-bench-infra-") as directory:
        cpu_before = children_cpu() + own_cpu()
        began = time.monotonic()
        infrastructure = start_infrastructure(Env(FREE_PORTS_ENV), directory)
        took = time.monotonic() - began
        infrastructure.stop()
        return Timed(took, children_cpu() + own_cpu() - cpu_before)


def measure_processes(programs: Sequence[str]) -> Timed:
    """Seconds until every `python -c <program>` started at once has exited (each must succeed)."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("MACP_")}
    cpu_before = children_cpu()
    began = time.monotonic()
    children = [subprocess.Popen([sys.executable, "-c", program], env=environ) for program in programs]
    try:
        codes = [child.wait(60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    took = time.monotonic() - began
    if any(codes):
        raise BenchError(f"python -c failed with codes {codes} for {list(programs)}")
    return Timed(took, children_cpu() - cpu_before)


@dataclass
class Results:
    runs: int
    processes: int
    fresh: list[UpRun] = field(default_factory=list)
    warm: list[UpRun] = field(default_factory=list)
    infrastructure: list[Timed] = field(default_factory=list)
    grpc_one: list[Timed] = field(default_factory=list)
    grpc_all: list[Timed] = field(default_factory=list)
    modules_all: list[Timed] = field(default_factory=list)


def run(runs: int, say: Callable[[str], None]) -> Results:
    apps = app_specs(Env({}))
    results = Results(runs=runs, processes=len(apps))
    grpc_programs = ["import grpc"] * len(apps)
    # What each app imports before it can serve: the service wiring, or the edge's server module.
    module_programs = [f"import {spec.module}.service" for spec in SERVICES] + [
        f"import {EDGE.module}.server"
    ]
    for index in range(1, runs + 1):
        with scratch_data_dir("macp-bench-up-") as data_dir:
            results.fresh.append(measure_up(data_dir))
            say(f"run {index}/{runs}: fresh data dir up in {results.fresh[-1].up:.1f} s")
            results.warm.append(measure_up(data_dir))
            say(f"run {index}/{runs}: warm data dir up in {results.warm[-1].up:.1f} s")
        results.infrastructure.append(measure_infrastructure())
        results.grpc_one.append(measure_processes(grpc_programs[:1]))
        results.grpc_all.append(measure_processes(grpc_programs))
        results.modules_all.append(measure_processes(module_programs))
        say(f"run {index}/{runs}: raw infrastructure up in {results.infrastructure[-1].wall:.1f} s")
    return results


def _row(label: str, values: Sequence[float]) -> list[str]:
    spread = Spread.of(values)
    return [label, f"{spread.median:.2f}", f"{spread.low:.2f}", f"{spread.high:.2f}"]


def report(results: Results) -> str:
    n = results.processes
    wall: list[list[str]] = []
    cpu: list[list[str]] = []
    for name, series in (("fresh", results.fresh), ("warm", results.warm)):
        up = f"`macp up`, {name} data dir"
        wall += [
            _row(f"{up}: spawn → first line", [r.first_line for r in series]),
            _row(
                f"{up}: spawn → infrastructure and Envoy start (config rendered)",
                [r.first_phase_began for r in series],
            ),
            _row(f"{up}: spawn → infrastructure and Envoy ready", [r.first_phase for r in series]),
            _row(f"{up}: 'every part ready in' (its own clock)", [r.reported for r in series]),
            _row(f"**{up}: spawn → 'MACP is up'**", [r.up for r in series]),
            _row(f"{up}: SIGTERM → exit, every pid gone", [r.stop for r in series]),
        ]
        cpu.append(_row(f"{up}: spawn → exit (start, ready, stop)", [r.cpu for r in series]))
    infrastructure = "raw: `start_infrastructure`, fresh dir (initdb, Redis, S3, Kafka)"
    wall.append(_row(infrastructure, [t.wall for t in results.infrastructure]))
    cpu.append(_row(f"{infrastructure}, start and stop", [t.cpu for t in results.infrastructure]))
    for label, timings in (
        ('raw: `python -c "import grpc"`, 1 process', results.grpc_one),
        (f'raw: `python -c "import grpc"`, {n} processes at once', results.grpc_all),
        (f"ours: import of the {n} apps' modules, {n} processes at once", results.modules_all),
    ):
        wall.append(_row(label, [t.wall for t in timings]))
        cpu.append(_row(label, [t.cpu for t in timings]))
    worst = max(r.up for r in results.fresh + results.warm)
    verdict = "met" if worst <= TARGET_SECONDS else "MISSED"
    pids = sorted({r.pids for r in results.fresh + results.warm})
    lines = [
        f"`macp up` over {results.runs} runs; {n} Python apps per stack. Wall seconds:",
        "",
        markdown_table(["measurement", "median s", "min s", "max s"], wall),
        "",
        "CPU seconds (user + system) of every process involved:",
        "",
        markdown_table(["measurement", "median CPU s", "min CPU s", "max CPU s"], cpu),
        "",
        f"Target all-SERVING <= {TARGET_SECONDS:g} s: {verdict} "
        f'(slowest run, spawn → "MACP is up": {worst:.1f} s).',
        f"After every SIGTERM, all {'/'.join(map(str, pids))} pids of stack.json "
        "(supervisor and children) were gone.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.macp_up", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (default 3)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    machine = machine_line()
    try:
        results = run(args.runs, lambda line: print(f"bench.macp_up: {line}", file=sys.stderr, flush=True))
    except (BenchError, StartupError, subprocess.TimeoutExpired) as exc:
        print(f"bench.macp_up: {exc}", file=sys.stderr)
        return 1
    print(report(results))
    print(machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
