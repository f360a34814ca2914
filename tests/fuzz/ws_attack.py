"""Sending the hostile WebSocket frames over the attacker's connection through Envoy: each frame,
then a `ping` whose `pong` shows the connection still serves; a closed connection is reopened for
the next case. After each case the bystander makes one ordinary request, as after an HTTP case."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.fuzz.evidence import ErrorRecords
from tests.fuzz.http_attack import next_caller
from tests.fuzz.targets import Attacker, Resources
from tests.fuzz.ws_cases import MAX_FRAME_BYTES, WsCase
from tests.world import World

# How long the edge may take to answer a frame and the ping after it.
ANSWER_SECONDS = 10.0
# Actions that open or use a conversation's Converse stream: how that stream ends is told later, in
# an error frame of its own. Each such case the edge may accept gets a connection of its own, read
# this long after the probe's pong, so what its stream does is pinned on it, never on the next case
# (a frame the edge must refuse never reaches a stream: those share one connection).
STREAM_ACTIONS = frozenset(
    {"subscribe", "message", "bid", "cancel", "utterance_start", "audio", "utterance_end", "utterance_cancel"}
)
SETTLE_SECONDS = 0.2
# Error codes that are the WebSocket's 5xx (docs/websocket.md maps gRPC statuses to error frames).
SERVER_ERRORS = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED"})


@dataclass
class WsOutcome:
    """frames: the non-event frames answered before the probe's pong; closed: the close code (and
    reason) if the edge closed instead; refused_status: the 4xx a refused handshake got;
    next_caller: the bystander's status right after."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    closed: tuple[int, str] | None = None
    refused_status: int | None = None  # the HTTP status of a handshake refused with a 4xx
    error: str = ""
    next_caller: int | None = 200
    next_caller_body: str = ""
    logs: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _url(world: World) -> str:
    return world.front_url.replace("http://", "ws://") + "/v1/ws"


async def _connect(world: World, token: str, extra: tuple[tuple[str, bytes], ...] = ()) -> ClientConnection:
    headers = [
        ("authorization", f"Bearer {token}"),
        *((name, value.decode("latin-1")) for name, value in extra),
    ]
    return await websockets.connect(
        _url(world),
        additional_headers=headers,
        max_size=None,
        compression=None,
        open_timeout=ANSWER_SECONDS,
        # The close handshake, then TCP: a case does not wait for Envoy to drop its side.
        close_timeout=0.1,
    )


async def _settle(connection: ClientConnection, outcome: WsOutcome) -> None:
    """The non-event frames that arrive within SETTLE_SECONDS (a stream's end, told late)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SETTLE_SECONDS):
            while True:
                try:
                    frame = json.loads(await connection.recv())
                except ConnectionClosed as closed:
                    received = closed.rcvd
                    outcome.closed = (
                        (received.code, received.reason) if received else (1006, "no close frame")
                    )
                    return
                if frame.get("type") != "event":
                    outcome.frames.append(frame)


async def _until_pong(connection: ClientConnection, probe: str, outcome: WsOutcome) -> None:
    async with asyncio.timeout(ANSWER_SECONDS):
        while True:
            frame = json.loads(await connection.recv())
            if frame.get("type") == "event":
                continue
            if frame.get("type") == "pong" and frame.get("request_id") == probe:
                return
            outcome.frames.append(frame)


async def _one(
    connection: ClientConnection, case: WsCase, data: str | bytes, probe: str, outcome: WsOutcome
) -> None:
    try:
        if case.binary:
            assert isinstance(data, bytes)
            await connection.send(data, text=False)
        else:
            await connection.send(data, text=True)
        await connection.send(json.dumps({"action": "ping", "request_id": probe}))
        await _until_pong(connection, probe, outcome)
    except ConnectionClosed as closed:
        received = closed.rcvd
        outcome.closed = (
            (received.code, received.reason) if received is not None else (1006, "no close frame")
        )
    except TimeoutError:
        outcome.error = f"no pong within {ANSWER_SECONDS} s"


async def attack_websocket(
    world: World,
    attacker: Attacker,
    bystander: Resources,
    cases: list[WsCase],
    bystander_client: httpx.AsyncClient,
    records: ErrorRecords,
) -> dict[str, WsOutcome]:
    slots = attacker.slots()
    outcomes: dict[str, WsOutcome] = {}
    connection: ClientConnection | None = None
    try:
        for index, case in enumerate(cases):
            probe = f"fuzz-ws-{index}"
            records.current = probe
            data = case.data
            for slot, value in slots.items():
                data = (
                    data.replace(slot, value)
                    if isinstance(data, str)
                    else data.replace(slot.encode(), value.encode())
                )
            assert len(data) <= MAX_FRAME_BYTES + 1
            outcome = WsOutcome()
            started = time.monotonic()
            try:
                if case.handshake or (case.action in STREAM_ACTIONS and not case.refused):
                    # A connection of its own, closed after the case.
                    async with await _connect(world, attacker.resources.token, case.handshake) as own:
                        await _one(own, case, data, probe, outcome)
                        if outcome.closed is None and not outcome.error:
                            await _settle(own, outcome)
                else:
                    if connection is None:
                        connection = await _connect(world, attacker.resources.token)
                    await _one(connection, case, data, probe, outcome)
            except websockets.InvalidStatus as exc:
                # A handshake refused with a 4xx (headers past Envoy's limit: 431) is a refusal
                # in HTTP's own words; a 5xx is the server failing.
                if not 400 <= exc.response.status_code < 500:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                outcome.refused_status = exc.response.status_code
            except (OSError, websockets.InvalidHandshake) as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
            if outcome.closed is not None or outcome.error:
                if connection is not None:
                    await connection.close()
                connection = None
            outcome.seconds = time.monotonic() - started
            outcome.next_caller, outcome.next_caller_body = await next_caller(bystander_client, bystander)
            outcome.logs = records.of(probe)
            outcomes[case.id] = outcome
    finally:
        if connection is not None:
            await connection.close()
    return outcomes


def problems(case: WsCase, outcome: WsOutcome) -> list[str]:
    found: list[str] = []
    if outcome.error:
        found.append(outcome.error)
    if outcome.closed is not None and outcome.closed[0] not in case.closes:
        found.append(f"closed the connection with {outcome.closed[0]} {outcome.closed[1]!r}")
    answered = outcome.closed is None and not outcome.error and outcome.refused_status is None
    if answered and case.refused and not any(frame.get("type") == "error" for frame in outcome.frames):
        found.append(f"no error frame for a frame it must refuse: {outcome.frames}")
    for frame in outcome.frames:
        if frame.get("type") == "error" and frame.get("code") in SERVER_ERRORS:
            found.append(f"answered {frame}")
    if outcome.next_caller != 200:
        found.append(
            f"the other tenant's next request answered {outcome.next_caller}: {outcome.next_caller_body}"
        )
    return found
