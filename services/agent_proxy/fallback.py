"""The walk every provider call takes to its first output: candidates behind their breakers, the
next one at once after a failure, the whole walk again after a backoff, all within the deadline.

Generate (generation.py) and Synthesize and Transcribe (speech.py) share it, so a provider is
guarded the same way whatever it is asked. A candidate is a (provider, model) pair with its own
breaker; the first is the one the caller asked for. An attempt runs until its first output (text,
a tool call, audio, a transcript) and raises `ProviderFailure` before it: a retryable failure (a
5xx, a timeout, a dropped connection) counts against the candidate's breaker and the walk goes on;
a refusal of the request itself (a 400) says nothing about the provider's health and ends the call
at once with the caller's error. When every candidate has failed, the walk starts again after an
exponential backoff with jitter, at most `retries` more times. The caller's deadline bounds every
attempt's SDK timeout (`bounded`), each backoff, and each fallback, which is not started once it
has passed: gRPC has answered DEADLINE_EXCEEDED by then, and another call would answer no one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from services.agent_proxy.provider import ProviderFailure
from services.runtime.breaker import CircuitBreaker
from services.runtime.errors import Unavailable

# How long past the caller's deadline an upstream call may run before its own timeout: gRPC ends
# the call at the deadline first (see `bounded`).
DEADLINE_GRACE_SECONDS = 0.25

T = TypeVar("T")


class Candidate(Protocol):
    """A (provider, model) pair to try, behind its breaker."""

    @property
    def name(self) -> str: ...

    @property
    def breaker(self) -> CircuitBreaker: ...


C = TypeVar("C", bound=Candidate)


def bounded(limit: float, deadline: float | None) -> float:
    """`limit` seconds, or fewer when the caller's deadline (loop time) comes sooner."""
    if deadline is None:
        return limit
    # A little past the caller's deadline: at the deadline gRPC cancels this call (and the
    # upstream request with it), and the caller hears DEADLINE_EXCEEDED. A provider timeout at
    # the very same moment would race it and answer UNAVAILABLE instead.
    remaining = deadline - asyncio.get_running_loop().time() + DEADLINE_GRACE_SECONDS
    return max(0.01, min(limit, remaining))


@dataclass(frozen=True)
class Fallback:
    retries: int
    retry_base_seconds: float
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def first_output(
        self,
        candidates: Sequence[C],
        attempt: Callable[[C], Awaitable[T]],
        deadline: float | None,
        refused: Callable[[ProviderFailure], Exception],
    ) -> tuple[C, T]:
        """The first candidate whose `attempt` reaches an output, with what the attempt returned.

        `attempt` closes whatever it opened before it raises; `refused` is the caller's error for a
        request the provider refused (non-retryable)."""
        loop = asyncio.get_running_loop()
        failed: list[tuple[C, ProviderFailure]] = []
        for walk in range(self.retries + 1):
            if walk:
                delay = self.retry_base_seconds * 2 ** (walk - 1) * (0.5 + random.random())
                if deadline is not None and loop.time() + delay >= deadline:
                    break
                await self.sleep(delay)
            admitted = False
            for candidate in candidates:
                if deadline is not None and failed and loop.time() >= deadline:
                    break  # gRPC has answered DEADLINE_EXCEEDED: a fallback would answer no one
                breaker = candidate.breaker
                if not breaker.try_acquire():
                    continue
                admitted = True
                try:
                    answered = await attempt(candidate)
                except ProviderFailure as failure:
                    if not failure.retryable:
                        breaker.release()
                        raise refused(failure) from None
                    breaker.record_failure()
                    failed.append((candidate, failure))
                    continue
                except BaseException:
                    breaker.release()
                    raise
                breaker.record_success()  # output came: the provider is healthy
                return candidate, answered
            if not admitted:
                break  # every breaker is open now: another walk would call nobody
        requested = candidates[0]
        if not failed:
            retry_at = datetime.fromtimestamp(requested.breaker.next_attempt_at(), UTC)
            raise Unavailable(
                f"{requested.name} and every fallback have an open circuit breaker; "
                f"the next trial is at {retry_at.isoformat(timespec='seconds')}"
            )
        tried = ", ".join(dict.fromkeys(candidate.name for candidate, _ in failed))
        raise Unavailable(
            f"{requested.name} and its fallbacks failed before answering "
            f"({len(failed)} attempts on {tried}); the last: {failed[-1][1].message}"
        )
