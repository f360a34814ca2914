"""The per-source-address limit, checked before authentication (services/edge/rate_limits.py has
the limits themselves).

Why before authentication: the limits by client and tenant need a verified token, so a request
with no token or a bad one, and a password or client secret guessed at `/oauth2/token`, would
otherwise be limited by nothing but the API as a whole. Here:
- a request without a bearer token (the OAuth endpoints, discovery, a route called without one)
  counts against its address's `source` limit, and is refused while the address is over its
  `source_failures` limit;
- a request whose answer says authentication failed (401 anywhere, any 4xx from `/oauth2/token`
  or from the sign-in page's POST to `/oauth2/authorize` but a 429) counts against
  `source_failures` before that answer goes out;
- an address has at most `MACP_RATE_LIMIT_SOURCE_IN_FLIGHT` (4) requests without a token
  answered at once by one edge process, more being refused at once: failures are counted as they
  are answered, so without it a burst sent at once would all be looked at (a password's scrypt
  costs the token service tens of ms) before its first failure was counted;
- an address refused once has its requests without a token refused from this process's memory
  until its retry-after: no Redis call, no body read, no password or secret looked at, and no
  access-log line each (a flood would make one per request): they are counted in the request
  metrics, and logged together, one line per REPORT_SECONDS naming the addresses refused most.
A request with a bearer token is never refused here: a valid token is no guess, and refusing it
would let anyone who shares an address with its owner (a NAT) lock the owner out. It is limited
by its client and tenant; a bad one is refused by authentication (401), counted as a failure.
So a signed-in request costs one dictionary look-up here, and a failed one a Redis call.

Which address: the last `x-forwarded-for` entry, the one Envoy's front listener appends, else the
TCP peer; an IPv6 source by its /64 (services/runtime/source_address.py, shared with the tool
gateway's `/mcp`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.edge.auth import bearer_token, is_public
from services.edge.middleware import UNLOGGED
from services.edge.rate_limits import UNCOUNTED_PATHS, RateLimits, refusal_response
from services.runtime.ratelimit import Decision, Limit
from services.runtime.source_address import scope_source, source_of

TOKEN_PATH = "/oauth2/token"
# The sign-in page posts the user's credentials here (services/edge/oauth/sign_in.py).
AUTHORIZE_PATH = "/oauth2/authorize"
# How often refusals are logged, and how many of the addresses refused most each line names.
REPORT_SECONDS = 10.0
REPORTED_ADDRESSES = 10

# `source_of` as the edge's modules (and their tests) have always imported it.
__all__ = ["AUTHORIZE_PATH", "TOKEN_PATH", "SourceLimitMiddleware", "failed_authentication", "source_of"]

log = logging.getLogger("macp.edge.ratelimit")


def failed_authentication(path: str, status: int, method: str = "POST") -> bool:
    """Whether an answer says the request failed to authenticate: a 401 anywhere (a refused bearer
    token, client authentication at introspection or revocation), a refused `/oauth2/token`
    attempt (a wrong password or client secret is 400 invalid_grant or 401 invalid_client), or a
    refused sign-in on the sign-in page (a wrong password is 400, a forged form 403; its GET, the
    page itself, is no attempt)."""
    if status == HTTPStatus.UNAUTHORIZED:
        return True
    if path == AUTHORIZE_PATH and method != "POST":
        return False
    return (
        path in (TOKEN_PATH, AUTHORIZE_PATH)
        and 400 <= status < 500
        and status != HTTPStatus.TOO_MANY_REQUESTS
    )


class SourceLimitMiddleware:
    """Counts unauthenticated requests and failed authentications per source address (see the
    module docstring); runs before authentication."""

    def __init__(
        self, app: ASGIApp, limits: Callable[[], RateLimits], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._app = app
        self._limits = limits
        self._clock = clock
        self._refused: Counter[str] = Counter()
        self._reported_at = clock()
        # address -> its requests without a token being answered now, in this process.
        self._in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in UNCOUNTED_PATHS or not self._limits().enabled:
            await self._app(scope, receive, send)
            return
        limits = self._limits()
        address = scope_source(scope)
        unauthenticated = is_public(path) or bearer_token(scope.get("headers", ())) is None
        if unauthenticated:
            refused = limits.blocked(address) or self._too_many_in_flight(address, limits)
            if refused is None:
                self._in_flight[address] += 1  # before the check's await: a burst sees it at once
                try:
                    decision = await limits.check_source(address)
                except BaseException:
                    self._done(address)
                    raise
                if not decision.admitted:
                    self._done(address)
                    refused = decision
            if refused is not None:
                scope[UNLOGGED] = True
                self._note_refusal(address)
                await refusal_response(refused)(scope, receive, send)
                return

        async def send_counting_failures(message: Message) -> None:
            # A failure is counted before its answer goes out, so the client's next attempt finds
            # it counted (an address already refused is over the limit: nothing more to count).
            if (
                message["type"] == "http.response.start"
                and failed_authentication(path, message["status"], scope.get("method", "GET"))
                and limits.blocked(address) is None
            ):
                await limits.count_failure(address)
            await send(message)

        try:
            await self._app(scope, receive, send_counting_failures)
        finally:
            if unauthenticated:
                self._done(address)

    def _done(self, address: str) -> None:
        self._in_flight[address] -= 1
        if not self._in_flight[address]:
            del self._in_flight[address]

    def _too_many_in_flight(self, address: str, limits: RateLimits) -> Decision | None:
        most = limits.settings.source_in_flight
        if self._in_flight[address] < most:
            return None
        limit = Limit("source_in_flight", most, 1.0, most)
        return Decision(admitted=False, retry_after_seconds=1.0, refused_by=limit, states=())

    def _note_refusal(self, address: str) -> None:
        self._refused[address] += 1
        now = self._clock()
        if now - self._reported_at < REPORT_SECONDS:
            return
        log.warning(
            "requests refused by source address",
            extra={
                "seconds": round(now - self._reported_at, 1),
                "refused": sum(self._refused.values()),
                "addresses": len(self._refused),
                "most": dict(self._refused.most_common(REPORTED_ADDRESSES)),
            },
        )
        self._refused.clear()
        self._reported_at = now
