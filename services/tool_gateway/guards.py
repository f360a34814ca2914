"""What keeps one upstream from hurting the rest: a circuit breaker and a cap on calls in flight,
per server (services/runtime/breaker.py; 5 failures open it for 60 s, as for providers).

A server whose breaker is open is refused at once, without a connection, until its open period has
passed; then one trial goes through. A server with as many operations in flight as the cap refuses
the next one at once rather than queueing it behind a slow upstream. A tool's own failure (a result
with `is_error`) is a success here: the server answered.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime.breaker import BreakerPolicy, CircuitBreaker, Clock
from services.tool_gateway.upstream import UpstreamFailure


@dataclass
class _Guard:
    breaker: CircuitBreaker
    in_flight: int = field(default=0)


class ServerGuards:
    def __init__(self, policy: BreakerPolicy, concurrency: int, clock: Clock = time.time) -> None:
        self._policy = policy
        self._concurrency = concurrency
        self._clock = clock
        self._guards: dict[str, _Guard] = {}

    def _guard(self, server: pb.ToolServer) -> _Guard:
        guard = self._guards.get(server.id)
        if guard is None:
            guard = self._guards[server.id] = _Guard(CircuitBreaker(self._policy, self._clock))
        return guard

    @asynccontextmanager
    async def guarding(self, server: pb.ToolServer) -> AsyncIterator[None]:
        """One operation on `server`, refused with an `UpstreamFailure` ("open" or "busy") when the
        server's breaker is open or its cap is reached; its outcome recorded on the breaker."""
        guard = self._guard(server)
        if guard.in_flight >= self._concurrency:
            raise UpstreamFailure(
                "busy", f"tool server {server.name} has {self._concurrency} calls in flight; try again"
            )
        if not guard.breaker.try_acquire():
            wait = max(1, math.ceil(guard.breaker.next_attempt_at() - self._clock()))
            raise UpstreamFailure(
                "open",
                f"tool server {server.name} failed {self._policy.failure_threshold} times in a row; "
                f"it is not called for {wait} s",
            )
        guard.in_flight += 1
        try:
            yield
        except UpstreamFailure:
            guard.breaker.record_failure()
            raise
        except BaseException:
            guard.breaker.release()  # cancelled: no verdict on the server
            raise
        else:
            guard.breaker.record_success()
        finally:
            guard.in_flight -= 1

    def forget(self, server_id: str) -> None:
        self._guards.pop(server_id, None)
