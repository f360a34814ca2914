"""`python -m bench.chaos`: SIGKILL each part of `macp up` under load; recovery times and the books.

It starts `macp up` (the console script, on free ports, bench/chaos_stack.py), signs in as the
seeded admin, and runs `--clients` WebSocket clients, each in its own one-agent conversation,
sending a message, waiting for its round, sending the next (bench/chaos_clients.py). After the load
has run `--load-seconds`, it kills one part with SIGKILL, then:

- restart: seconds until stack.json names a new living pid for the part (the supervisor's restart);
- first turn: seconds from the kill to the first turn_completed COMPLETED (by the event's own time);
- all clients: seconds until every client has had a turn COMPLETED again;
- hung: clients that received no event for `--hang-seconds` while `macp up` ran;
- lost / duplicated / not in log: by event id, each client's received events against its
  conversation's full log, read at the end from the first event, attributed to the kill window
  their event time falls in;

and lets the load run `--load-seconds` more before the next kill. Kinds are killed in the order
given, the whole sequence `--rounds` times. Once the load stops and `--quiet-seconds` passed, it
checks the books in the stores themselves (bench/chaos_books.py) and prints one table row per
kill, then the books line. The CI version of this run is tests/chaos/test_chaos.py.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos_books import Books, check_books
from bench.chaos_clients import ChaosClient, ClientRecord, LogReadError, Received, read_full_log
from bench.chaos_stack import (
    KINDS,
    ChaosError,
    Kill,
    Stack,
    canonical_kind,
    replica_kinds,
    running_stack,
)
from bench.stats import machine_line, markdown_table
from services.stack.replicas import MAX_REPLICAS

Say = Callable[[str], None]
LOG_READ_ATTEMPTS = 3
HANG_GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class ChaosConfig:
    clients: int = 20
    kinds: tuple[str, ...] = KINDS
    rounds: int = 1  # times the whole sequence of kinds is run
    load_seconds: float = 15.0  # load before the first kill, and after each recovery
    recover_seconds: float = 30.0  # at most this long after a kill for every client to complete again
    restart_seconds: float = 5.0  # the supervisor must have restarted the part by then
    turns_again_seconds: float = 10.0  # turns must complete again by then
    restart_watch_seconds: float = 30.0  # how long to look for a restart at all
    hang_seconds: float = 30.0
    quiet_seconds: float = 30.0
    drain_seconds: float = 60.0  # for the rounds in flight when the load stops
    log_quiet_seconds: float = 3.0  # a full-log read ends after this long without an event
    replicas: int = 1  # processes of every service and of the edge (`macp up --replicas`)


@dataclass
class KillResult:
    """One kill's figures (seconds from the kill; None: it did not happen)."""

    kill: Kill
    window_end: float  # wall clock: the next kill, or the end of the load
    restart: float | None = None
    first_turn: float | None = None
    all_clients: float | None = None
    clients_recovered: int = 0
    hung_clients: int = 0
    events: Tally = field(default_factory=lambda: Tally())

    def failures(self, config: ChaosConfig, clients: int) -> list[str]:
        found = []
        name = self.kill.kind
        if self.restart is None or self.restart > config.restart_seconds:
            found.append(
                f"{name}: not restarted within {config.restart_seconds:g} s ({_seconds(self.restart)})"
            )
        if self.first_turn is None or self.first_turn > config.turns_again_seconds:
            found.append(
                f"{name}: no turn completed within {config.turns_again_seconds:g} s "
                f"({_seconds(self.first_turn)})"
            )
        if self.all_clients is None or self.all_clients > config.turns_again_seconds:
            found.append(
                f"{name}: not every client completed a turn within {config.turns_again_seconds:g} s "
                f"({self.clients_recovered}/{clients} did, last at {_seconds(self.all_clients)})"
            )
        if self.hung_clients:
            found.append(f"{name}: {self.hung_clients} clients hung")
        if self.events != Tally():
            found.append(
                f"{name}: events lost {self.events.lost}, duplicated {self.events.duplicated}, "
                f"received but not in the log {self.events.not_in_log}"
            )
        return found


@dataclass
class ChaosReport:
    config: ChaosConfig
    kills: list[KillResult] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)  # kinds skipped because the stack was down
    records: list[ClientRecord] = field(default_factory=list)
    books: Books | None = None
    books_error: str | None = None
    log_errors: list[str] = field(default_factory=list)
    stack_exited: str | None = None  # macp up's exit, when it stopped during the run
    unfinished: int = 0  # clients whose last round never completed
    overall: Tally = field(default_factory=lambda: Tally())  # the whole run, kills or not
    hung_clients: int = 0  # over the whole run
    # Open connections from Envoy to each edge replica before the first kill: how the clients'
    # WebSockets spread over the edges (replicas only).
    edge_connections: dict[str, int] = field(default_factory=dict)

    @property
    def unspread_edges(self) -> list[str]:
        """Edge replicas that carried less than half their share of the clients."""
        if self.config.replicas == 1 or not self.edge_connections:
            return []
        share = self.config.clients / len(self.edge_connections)
        return [name for name, count in self.edge_connections.items() if count < share / 2]

    @property
    def failures(self) -> list[str]:
        found = []
        if self.stack_exited:
            found.append(self.stack_exited)
        if self.unspread_edges:
            found.append(f"the clients did not spread over the edges: {self.edge_connections}")
        if self.not_run:
            found.append(f"not killed (the stack was down): {', '.join(self.not_run)}")
        for result in self.kills:
            found += result.failures(self.config, len(self.records))
        if self.overall != Tally():
            found.append(f"whole run: events lost / duplicated / not in log: {self.overall}")
        if self.hung_clients:
            found.append(f"whole run: {self.hung_clients} clients hung")
        if self.unfinished:
            found.append(f"{self.unfinished} clients' last rounds never completed")
        found += self.log_errors
        if self.books_error:
            found.append(self.books_error)
        elif self.books is not None:
            found += self.books.failures
        return found

    def explained(self) -> str:
        """The whole table and every failure: what a failed check of the run shows."""
        return "\n" + self.table() + "\n" + "\n".join(self.failures)

    def table(self) -> str:
        rows = []
        for result in self.kills:
            rows.append(
                [
                    result.kill.kind,
                    _seconds(result.restart),
                    _seconds(result.first_turn),
                    _seconds(result.all_clients)
                    if result.all_clients is not None
                    else f"never ({result.clients_recovered}/{len(self.records)})",
                    str(result.hung_clients),
                    str(result.events),
                ]
            )
        headers = [
            "killed",
            "restart s",
            "first turn s",
            "all clients s",
            "hung clients",
            "lost / duplicated / not in log",
        ]
        rounds = sum(record.rounds for record in self.records)
        lines = [
            f"{len(self.records)} WebSocket clients, one-agent rounds back to back; {rounds} rounds "
            f"completed; targets: restart <= {self.config.restart_seconds:g} s, turns again "
            f"<= {self.config.turns_again_seconds:g} s, no hang (no event for "
            f"{self.config.hang_seconds:g} s), nothing lost or duplicated.",
            "",
            markdown_table(headers, rows),
            "",
        ]
        if self.not_run:
            lines.append(f"not killed (the stack was down): {', '.join(self.not_run)}")
        if self.edge_connections:
            spread = ", ".join(f"{name} {count}" for name, count in self.edge_connections.items())
            lines.append(f"connections per edge before the first kill: {spread}")
        if self.stack_exited:
            lines.append(self.stack_exited)
        reconnects = sum(r.reconnects for r in self.records)
        resends = sum(r.resends for r in self.records)
        resubscribes = sum(r.resubscribes for r in self.records)
        lines.append(
            f"whole run: events lost / duplicated / not in log {self.overall}; "
            f"{self.hung_clients} clients hung"
        )
        lines.append(
            f"clients: {reconnects} reconnects, {resubscribes} resubscribes, {resends} messages sent "
            f"again, {self.unfinished} last rounds unfinished"
        )
        lines += [h.note(r.index, r.conversation_id) for r in self.records for h in r.hangs]
        for error in self.log_errors:
            lines.append(error)
        if self.books is not None:
            lines.append(self.books.line())
            lines += self.books.samples()
        elif self.books_error:
            lines.append(f"books: not checked: {self.books_error}")
        return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "never" if value is None or math.isinf(value) else f"{value:.2f}"


# --- the figures --------------------------------------------------------------------------------


def first_completed_after(record: ClientRecord, at: float) -> float | None:
    times = [t for t in record.completed_turn_times() if t > at]
    return min(times) if times else None


@dataclass(frozen=True)
class Tally:
    """Events of one time window compared by id: the full logs against what the clients received."""

    lost: int = 0  # in the log, never received
    duplicated: int = 0  # received more than once
    not_in_log: int = 0  # received, but the log does not hold it (the log lost it)

    def __str__(self) -> str:
        return f"{self.lost} / {self.duplicated} / {self.not_in_log}"


def tally(
    records: Sequence[ClientRecord], logs: dict[str, list[Received]], began: float, ended: float
) -> Tally:
    """By the events' own times in [began, ended); a client whose log was not read counts only
    its duplicates."""
    lost = duplicated = not_in_log = 0
    for record in records:
        counts = Counter(e.event_id for e in record.events if e.event_id and began <= e.time < ended)
        duplicated += sum(n - 1 for n in counts.values() if n > 1)
        log = logs.get(record.conversation_id)
        if log is None:
            continue
        logged = {e.event_id for e in log}
        received = {e.event_id for e in record.events if e.event_id}
        lost += sum(1 for e in log if began <= e.time < ended and e.event_id not in received)
        not_in_log += sum(1 for event_id in counts if event_id not in logged)
    return Tally(lost, duplicated, not_in_log)


def score_kills(
    kills: Sequence[KillResult], records: Sequence[ClientRecord], logs: dict[str, list[Received]]
) -> None:
    """Fills in each kill's turn, hang and event figures from what the clients and logs hold."""
    for result in kills:
        began, ended = result.kill.at, result.window_end
        firsts = [first_completed_after(record, began) for record in records]
        within = [t for t in firsts if t is not None and t < ended]
        result.first_turn = (min(within) - began) if within else None
        result.clients_recovered = len(within)
        result.all_clients = (max(within) - began) if within and len(within) == len(records) else None
        # A hang counts where its silence began: a client stuck since an earlier kill shows there
        # (and in the later kills' "all clients" column, which it never reaches). A silence that
        # began just before a kill is that kill's: the events in flight then are often the last.
        result.hung_clients = sum(
            1 for r in records if any(began <= h.began + HANG_GRACE_SECONDS < ended for h in r.hangs)
        )
        result.events = tally(records, logs, began, ended)


# --- the run ------------------------------------------------------------------------------------


class Tokens:
    """The seeded admin's access token, signed in again when asked for a fresh one."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._token: str | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, fresh: bool) -> str:
        async with self._lock:
            if self._token is None or fresh:
                self._token = await asyncio.to_thread(self._stack.sign_in)
            return self._token


async def _recovered(records: Sequence[ClientRecord], at: float, cap: float, stack: Stack) -> None:
    """Until every client completed a turn after `at`, the cap passes, or the stack is gone."""
    deadline = at + cap
    while time.time() < deadline and stack.up():
        if all(first_completed_after(record, at) is not None for record in records):
            return
        await asyncio.sleep(0.2)


async def _wait_idle(clients: Sequence[ChaosClient], seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await asyncio.gather(*(client.idle.wait() for client in clients))
    except TimeoutError:
        pass  # the rounds still awaited are counted as unfinished


async def _read_logs(
    stack: Stack, tokens: Tokens, records: Sequence[ClientRecord], quiet: float, report: ChaosReport
) -> dict[str, list[Received]]:
    token = await tokens(True)
    logs: dict[str, list[Received]] = {}
    gate = asyncio.Semaphore(8)

    async def one(conversation_id: str) -> None:
        async with gate:
            # A few tries: a part restarted late may still be coming up; a log that cannot be read
            # at all is a finding (its events are then not compared).
            for attempt in range(LOG_READ_ATTEMPTS):
                try:
                    logs[conversation_id] = await read_full_log(stack.ws_base, token, conversation_id, quiet)
                    return
                except (LogReadError, OSError, Exception) as exc:
                    if attempt + 1 == LOG_READ_ATTEMPTS:
                        report.log_errors.append(f"log of {conversation_id}: {exc}")
                    await asyncio.sleep(1.0)

    await asyncio.gather(*(one(record.conversation_id) for record in records))
    return logs


async def run_load(stack: Stack, config: ChaosConfig, say: Say) -> ChaosReport:
    """The load, the kills, the quiet period and the checks, on a running stack."""
    report = ChaosReport(config)
    tokens = Tokens(stack)
    conversation_ids = await asyncio.to_thread(
        stack.create_conversations, await tokens(False), config.clients
    )
    report.records = [ClientRecord(i, c) for i, c in enumerate(conversation_ids)]
    clients = [
        ChaosClient(record, stack.ws_base, tokens, stack.up, hang_seconds=config.hang_seconds)
        for record in report.records
    ]
    tasks = [asyncio.create_task(client.run()) for client in clients]
    say(f"{config.clients} clients running; load for {config.load_seconds:g} s before the first kill")
    try:
        await asyncio.sleep(config.load_seconds)
        if config.replicas > 1:
            report.edge_connections = await asyncio.to_thread(stack.edge_connections)
        sequence = [kind for _ in range(config.rounds) for kind in config.kinds]
        for position, kind in enumerate(sequence):
            if not stack.up():
                report.not_run = sequence[position:]
                break
            kill = await asyncio.to_thread(stack.kill, kind)
            result = KillResult(kill, window_end=math.inf)
            report.kills.append(result)
            result.restart = await asyncio.to_thread(stack.wait_restart, kill, config.restart_watch_seconds)
            await _recovered(report.records, kill.at, config.recover_seconds, stack)
            rounds = sum(record.rounds for record in report.records)
            say(
                f"killed {kind} (pid {kill.pid}): restart {_seconds(result.restart)} s; "
                f"{rounds} rounds completed so far"
            )
            if not stack.up():
                report.stack_exited = (
                    f"macp up exited with code {stack.process.poll()} after {kind} was killed:\n"
                    + stack.log_tail()
                )
                continue
            await asyncio.sleep(config.load_seconds)
        end_of_load = time.time()
        for index, result in enumerate(report.kills):
            following = report.kills[index + 1] if index + 1 < len(report.kills) else None
            result.window_end = following.kill.at if following else end_of_load
        say("load stopping; waiting for the rounds in flight")
        for client in clients:
            client.stop()
        await _wait_idle(clients, config.drain_seconds if stack.up() else 1.0)
        say(f"quiet for {config.quiet_seconds:g} s")
        await asyncio.sleep(config.quiet_seconds if stack.up() else 0)
    finally:
        for client in clients:
            client.close()
        await _finish(tasks)
        for client in clients:
            client.record.unfinished = client.waiting_for
    report.unfinished = sum(1 for r in report.records if r.unfinished)
    logs: dict[str, list[Received]] = {}
    if stack.up():
        say("reading every conversation's log from its start, and the books")
        logs = await _read_logs(stack, tokens, report.records, config.log_quiet_seconds, report)
        try:
            report.books = await check_books(stack.postgres_url, stack.redis_url, report.records, logs)
        except Exception as exc:  # a store that is down is a finding, not a crash of the harness
            report.books_error = f"the books could not be read: {exc!r}"
    else:
        report.books_error = "the stack was down at the end"
    score_kills(report.kills, report.records, logs)
    report.overall = tally(report.records, logs, -math.inf, math.inf)
    report.hung_clients = sum(1 for record in report.records if record.hangs)
    if not logs:
        report.log_errors.append("no conversation log was read: events were not compared")
    return report


async def _finish(tasks: Sequence[asyncio.Task[None]]) -> None:
    done, pending = await asyncio.wait(tasks, timeout=10) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a bug in the client loop itself must not pass silently


def run_chaos(config: ChaosConfig, say: Say, keep_logs: Path | None = None) -> ChaosReport:
    """Start `macp up`, run the load and the kills, check the books, stop the stack (its logs
    copied to `keep_logs`, if given)."""
    with running_stack(say, keep_logs, config.replicas) as stack:
        return asyncio.run(run_load(stack, config, say))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--clients", type=int, default=20, help="WebSocket clients (default 20)")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="processes of every service and of the edge (default 1); with more, the kinds are "
        "replicas (orchestrator-1, ...) and the default kills each replica once",
    )
    parser.add_argument(
        "--kinds",
        default=None,
        help="parts to kill, in order, comma-separated (default: all ten, or every replica)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="times the whole sequence runs (default 1)")
    parser.add_argument("--load-seconds", type=float, default=15.0, help="load before each kill (default 15)")
    parser.add_argument(
        "--hang-seconds", type=float, default=30.0, help="silence that is a hang (default 30)"
    )
    parser.add_argument(
        "--quiet-seconds", type=float, default=30.0, help="quiet before the books (default 30)"
    )
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="copy every part's log here when the run ends"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.replicas <= MAX_REPLICAS:
        parser.error(f"--replicas must be from 1 to {MAX_REPLICAS}")
    default_kinds = KINDS if args.replicas == 1 else replica_kinds(args.replicas)
    named = default_kinds if args.kinds is None else args.kinds.split(",")
    try:
        kinds = tuple(canonical_kind(kind, args.replicas) for kind in named if kind.strip())
    except ValueError as exc:
        parser.error(str(exc))
    if args.clients < 1 or args.rounds < 1 or not kinds:
        parser.error("--clients and --rounds must be at least 1, and --kinds name one kind")
    config = ChaosConfig(
        clients=args.clients,
        kinds=kinds,
        rounds=args.rounds,
        load_seconds=args.load_seconds,
        hang_seconds=args.hang_seconds,
        quiet_seconds=args.quiet_seconds,
        replicas=args.replicas,
    )
    machine = machine_line()
    try:
        report = run_chaos(
            config, lambda line: print(f"bench.chaos: {line}", file=sys.stderr, flush=True), args.keep_logs
        )
    except ChaosError as exc:
        print(f"bench.chaos: {exc}", file=sys.stderr)
        return 1
    print(report.table())
    print(machine)
    failures = report.failures
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
