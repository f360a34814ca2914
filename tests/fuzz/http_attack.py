"""Sending the hostile HTTP requests, one at a time, each followed at once by an ordinary request of
the other tenant: the issue saw the next caller of another tenant get Envoy's 503 after a crash,
and a request straight after each case pins such harm on the case that did it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import httpx

from tests.fuzz.evidence import ErrorRecords
from tests.fuzz.http_cases import HttpCase
from tests.fuzz.page_tokens import forged
from tests.fuzz.targets import Attacker, Resources

# Answers a case may take this long (a 1 MiB body through Envoy on a busy machine).
CASE_TIMEOUT_SECONDS = 15.0
# An SSE answer streams until the client leaves: its status and headers are all a case needs.
STREAMING = "text/event-stream"


@dataclass
class HttpOutcome:
    """status: the answer's (None: no answer, see `error`); next_caller: the bystander's answer
    right after (200 when unharmed); logs: the services' error records while the case ran."""

    request_id: str
    status: int | None
    body: str
    error: str = ""
    next_caller: int | None = 200
    next_caller_body: str = ""
    logs: list[str] = field(default_factory=list)


def _filled(text: str, slots: dict[str, str]) -> str:
    for slot, value in slots.items():
        text = text.replace(slot, value)
    return text


async def _current_etag(client: httpx.AsyncClient, path: str, token: str) -> str:
    """The ETag of the resource at `path` right now (PATCH needs it, and every accepted PATCH moves it)."""
    response = await client.get(path, headers={"authorization": f"Bearer {token}"})
    return str(response.headers.get("etag", '"none"'))


async def send(
    case: HttpCase,
    index: int,
    attacker: Attacker,
    bystander: Resources,
    attacker_client: httpx.AsyncClient,  # sends no credential of its own: each case names its own
    bystander_client: httpx.AsyncClient,
    records: ErrorRecords,
) -> HttpOutcome:
    slots = attacker.slots()
    request_id = f"fuzz-{index}-{uuid.uuid4().hex[:8]}"
    hostile = dict(case.headers)
    if "x-request-id" in hostile:
        # The case's own request id: the services file their records under it.
        request_id = hostile["x-request-id"].decode("latin-1")
    records.current = request_id
    headers: dict[str, str | bytes] = {"x-request-id": request_id}
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    if case.credential == "user":
        headers["authorization"] = f"Bearer {attacker.resources.token}"
    elif case.credential == "initial":
        headers["authorization"] = f"Bearer {attacker.initial_access_token}"
    path = _filled(case.path, slots)
    if case.method == "PATCH":
        headers["if-match"] = await _current_etag(attacker_client, path, attacker.resources.token)
    elif case.method == "DELETE":
        headers["if-match"] = '"stale"'  # the attack must not delete what the next cases aim at
    headers |= hostile
    body = case.body
    if body is not None:
        for slot, value in slots.items():
            body = body.replace(slot.encode(), value.encode())
    url = f"{path}?{forged(case.query, attacker)}" if case.query else path
    outcome = HttpOutcome(request_id, None, "")
    try:
        async with attacker_client.stream(
            case.method, url, content=body, headers=_wire(headers), timeout=CASE_TIMEOUT_SECONDS
        ) as response:
            outcome.status = response.status_code
            if not response.headers.get("content-type", "").startswith(STREAMING):
                outcome.body = (await response.aread())[:400].decode(errors="replace")
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.next_caller, outcome.next_caller_body = await next_caller(bystander_client, bystander)
    outcome.logs = records.of(request_id)
    return outcome


def _wire(headers: dict[str, str | bytes]) -> dict[bytes, bytes]:
    """Headers as sent: hostile values are bytes already (not all of them are text)."""
    return {
        name.encode(): value if isinstance(value, bytes) else value.encode("latin-1")
        for name, value in headers.items()
    }


async def next_caller(client: httpx.AsyncClient, bystander: Resources) -> tuple[int | None, str]:
    """The bystander reads its own agent: 200, whatever the attacker just did."""
    try:
        response = await client.get(f"/v1/agents/{bystander.agent}")
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return response.status_code, response.text[:300]


def problems(case: HttpCase, outcome: HttpOutcome) -> list[str]:
    """What is wrong with a case's outcome (nothing, when the edge held)."""
    found: list[str] = []
    if outcome.status is None:
        found.append(f"no answer: {outcome.error}")
    elif outcome.status >= 500:
        found.append(f"answered {outcome.status}: {outcome.body[:300]}")
    elif outcome.status == 429:
        # The fuzz world's rate limits are out of reach: a 429 is no verdict on the case (and a
        # client would wait its Retry-After to be refused again).
        found.append(f"answered 429, not a verdict on the request: {outcome.body[:300]}")
    elif case.malformed and not 400 <= outcome.status < 500:
        found.append(f"a malformed request answered {outcome.status}, not a 4xx: {outcome.body[:200]}")
    if outcome.next_caller != 200:
        found.append(
            f"the other tenant's next request answered {outcome.next_caller}: {outcome.next_caller_body}"
        )
    return found
