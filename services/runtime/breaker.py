"""A circuit breaker (004_*.txt: open after 5 failures, retry after 60 s): the agent proxy keeps one
per provider and model, the tool gateway one per upstream server.

CLOSED counts consecutive failures; at the threshold it turns OPEN and refuses calls at once; once
the open period has passed the next caller finds it HALF_OPEN and is let through alone as the
trial: success closes it, failure re-opens it for another period. The clock is injected, so tests
walk through the states without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

Clock = Callable[[], float]  # seconds since the epoch: time.time, or a test's hand-moved clock


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    open_seconds: float = 60.0


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy, clock: Clock = time.time) -> None:
        self.policy = policy
        self._clock = clock
        self.consecutive_failures = 0
        self.opened_at: float | None = None  # when it last opened; kept after it closes again
        self._open = False
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        if not self._open:
            return BreakerState.CLOSED
        if self._clock() >= self.next_attempt_at():
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def next_attempt_at(self) -> float:
        assert self.opened_at is not None
        return self.opened_at + self.policy.open_seconds

    def try_acquire(self) -> bool:
        """Whether a call may go upstream now; a HALF_OPEN breaker lets exactly one trial through."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._open = False
        self._trial_running = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self._open or self.consecutive_failures >= self.policy.failure_threshold:
            self._open = True
            self.opened_at = self._clock()
        self._trial_running = False

    def release(self) -> None:
        """A call that ended with no verdict on the provider (the caller cancelled, the request was
        refused as bad): a trial slot goes back, nothing else changes."""
        self._trial_running = False
