"""Nothing lost when a replica dies: two of every service and two edges, each replica SIGKILLed once.

The harness of `python -m bench.chaos --replicas 2` (bench/chaos*.py): `macp up --replicas 2` (the
console script), fifty WebSocket clients through Envoy's front listener, which spreads them over
both edges, each client running one-agent rounds back to back in its own conversation. After a
few seconds of load, each replica of each service and of the edge is SIGKILLed, one at a time,
the next once the supervisor has restarted the last and every client has completed a turn again.
Then the load stops, the stack goes quiet, and the books are read from the stores. The run happens
once for the module; each test asserts one point of the issue against it, with the whole table in
its message.
"""

from __future__ import annotations

import sys

import pytest

from bench.chaos import ChaosConfig, ChaosReport, Tally, run_chaos
from bench.chaos_stack import replica_kinds

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPLICAS = 2
KILLS = replica_kinds(REPLICAS)
CONFIG = ChaosConfig(
    clients=50,
    kinds=KILLS,
    replicas=REPLICAS,
    load_seconds=4.0,
    # On two cores with every process twice and fifty clients, a restart (a Python process
    # importing its service, connecting its stores, passing its readiness checks) takes seconds
    # longer than in the one-replica run; its twin serves meanwhile, which is what is tested here.
    restart_seconds=15.0,
    restart_watch_seconds=30.0,
    recover_seconds=20.0,
    turns_again_seconds=20.0,
    hang_seconds=20.0,
    quiet_seconds=20.0,
    drain_seconds=40.0,
)


@pytest.fixture(scope="module")
def report() -> ChaosReport:
    return run_chaos(CONFIG, lambda line: print(f"replica chaos: {line}", file=sys.stderr, flush=True))


def test_every_replica_of_every_service_and_edge_was_killed_once(report: ChaosReport) -> None:
    assert [result.kill.kind for result in report.kills] == list(KILLS), report.explained()
    assert len(set(KILLS)) == 2 * 7  # six services and the edge, two of each
    assert not report.not_run, report.explained()
    assert report.stack_exited is None, report.explained()
    assert all(result.restart is not None for result in report.kills), report.explained()


def test_the_clients_spread_over_both_edges(report: ChaosReport) -> None:
    assert set(report.edge_connections) == {"edge-1", "edge-2"}, report.explained()
    assert report.unspread_edges == [], report.explained()


def test_every_round_completed_or_ended_with_an_error_and_none_hung(report: ChaosReport) -> None:
    assert sum(record.rounds for record in report.records) > 0, report.explained()
    assert report.hung_clients == 0, report.explained()
    assert report.unfinished == 0, report.explained()
    assert report.books is not None, report.explained()
    assert report.books.errors_without_id == 0, report.explained()


def test_no_round_ran_twice(report: ChaosReport) -> None:
    assert report.books is not None, report.explained()
    assert report.books.answered_twice == {}, report.explained()
    assert report.books.completed_then_failed == [], report.explained()


def test_every_client_resumed_with_nothing_missing_or_doubled(report: ChaosReport) -> None:
    assert not report.log_errors, report.explained()
    assert report.overall == Tally(), report.explained()
    resumed = sum(record.reconnects for record in report.records)
    assert resumed > 0, "no client had to resume" + report.explained()


def test_metering_totals_equal_the_stored_turns_exactly(report: ChaosReport) -> None:
    books = report.books
    assert books is not None, report.explained()
    assert books.agent_answers == books.agent_turn_events, report.explained()
    assert books.answers_not_metered == [], report.explained()
    assert books.metered_not_answered == [], report.explained()
    assert books.orchestration_events == books.rounds, report.explained()


def test_no_quota_hold_leaked(report: ChaosReport) -> None:
    assert report.books is not None, report.explained()
    assert report.books.open_holds == [], report.explained()
