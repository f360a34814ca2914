"""Crash safety, the short run: SIGKILL a service, the edge, Redis and Postgres under load.

The same harness as `python -m bench.chaos` (bench/chaos*.py), shortened for the suite: 8
WebSocket clients running one-agent rounds back to back against `macp up` (the console script),
the orchestrator, the edge, Redis and Postgres each killed once after 6 s of load, then a 20 s
quiet period (past the 15 s a held-back usage event may take) and the books. The run happens once
for the module; each test asserts one point of the issue against it, with the whole table in its
message.
"""

from __future__ import annotations

import sys

import pytest

from bench.chaos import ChaosConfig, ChaosReport, Tally, run_chaos
from bench.chaos_books import USAGE_DELAY_LIMIT_SECONDS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(330)]

KINDS = ("orchestrator", "edge", "redis", "postgres")
CONFIG = ChaosConfig(
    clients=8,
    kinds=KINDS,
    load_seconds=6.0,
    recover_seconds=15.0,
    hang_seconds=20.0,
    quiet_seconds=20.0,
    drain_seconds=30.0,
)


@pytest.fixture(scope="module")
def report() -> ChaosReport:
    return run_chaos(CONFIG, lambda line: print(f"chaos: {line}", file=sys.stderr, flush=True))


def test_the_load_ran_and_every_kind_was_killed(report: ChaosReport) -> None:
    assert [result.kill.kind for result in report.kills] == list(KINDS), report.explained()
    assert not report.not_run, report.explained()
    assert report.stack_exited is None, report.explained()
    assert sum(record.rounds for record in report.records) > 0, report.explained()


def test_the_supervisor_restarts_each_part_within_5_s(report: ChaosReport) -> None:
    slow = {r.kill.kind: r.restart for r in report.kills if r.restart is None or r.restart > 5.0}
    assert not slow, report.explained()


def test_turns_complete_again_within_10_s_of_each_kill(report: ChaosReport) -> None:
    late = {
        r.kill.kind: (r.first_turn, r.all_clients)
        for r in report.kills
        if r.first_turn is None or r.first_turn > 10.0 or r.all_clients is None or r.all_clients > 10.0
    }
    assert not late, report.explained()


def test_no_client_hangs(report: ChaosReport) -> None:
    assert report.hung_clients == 0, report.explained()
    assert report.unfinished == 0, report.explained()


def test_no_event_is_lost_or_duplicated(report: ChaosReport) -> None:
    assert not report.log_errors, report.explained()
    assert report.overall == Tally(), report.explained()


def test_stored_answers_equal_metered_turns(report: ChaosReport) -> None:
    books = report.books
    assert books is not None, report.explained()
    assert books.agent_answers == books.agent_turn_events, report.explained()
    assert books.answers_not_metered == [], report.explained()
    assert books.metered_not_answered == [], report.explained()


def test_orchestrations_equal_rounds(report: ChaosReport) -> None:
    assert report.books is not None, report.explained()
    assert report.books.orchestration_events == report.books.rounds, report.explained()


def test_no_quota_hold_is_left_open(report: ChaosReport) -> None:
    assert report.books is not None, report.explained()
    assert report.books.open_holds == [], report.explained()


def test_no_message_is_answered_twice(report: ChaosReport) -> None:
    assert report.books is not None, report.explained()
    assert report.books.answered_twice == {}, report.explained()


def test_no_turn_goes_from_completed_to_failed(report: ChaosReport) -> None:
    assert report.books is not None, report.explained()
    assert report.books.completed_then_failed == [], report.explained()


def test_every_error_event_has_an_event_id(report: ChaosReport) -> None:
    assert report.books is not None, report.explained()
    assert report.books.errors_without_id == 0, report.explained()


def test_usage_reaches_metering_within_10_s_of_the_part_s_recovery(report: ChaosReport) -> None:
    assert report.books is not None, report.explained()
    assert report.books.usage_delay_max <= USAGE_DELAY_LIMIT_SECONDS, report.explained()
