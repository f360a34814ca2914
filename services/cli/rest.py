"""JSON over REST at the running stack's edge, for the commands that change things there (`macp
tool-servers`, `macp tools`): one request with the caller's bearer token, its JSON answer, and the
edge's error as one line (`HTTP 403: <its message>`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from services.cli.accounts import EXIT_NOT_RUNNING, CliError

TIMEOUT_SECONDS = 30.0

# Loopback requests must never go through a proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request_json(
    method: str,
    url: str,
    token: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`method` on `url` with `body` as JSON; the JSON object answered ({} for an empty answer)."""
    sent = {"authorization": f"Bearer {token}", "accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["content-type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=sent, method=method)
    try:
        with _HTTP.open(request, timeout=TIMEOUT_SECONDS) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as error:
        raise CliError(_failure(error.code, error.read())) from None
    except OSError as error:
        raise CliError(f"cannot reach {url}: {getattr(error, 'reason', error)}", EXIT_NOT_RUNNING) from None
    if not raw:
        return {}
    try:
        document = json.loads(raw)
    except ValueError:
        raise CliError(f"{url} answered something other than JSON") from None
    if not isinstance(document, dict):
        raise CliError(f"{url} answered something other than a JSON object")
    return document


def _failure(status: int, body: bytes) -> str:
    try:
        failure = json.loads(body)
    except ValueError:
        failure = {}
    message = failure.get("message", "") if isinstance(failure, dict) else ""
    return f"HTTP {status}: {message}" if message else f"HTTP {status}"


def table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows as aligned columns, the first row the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
