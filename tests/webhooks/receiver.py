"""A webhook receiver on 127.0.0.1, as a subscriber writes one: it checks each delivery's Standard
Webhooks signature and timestamp with its own code (not the deliverer's), and answers as a test
tells it: fail the first N requests, fail every one, or hold one request open until released.

It records every request (so retries are seen) and the deliveries it accepted, de-duplicated by
`webhook-id` as the specification tells a receiver to."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.stack.config import free_port

TOLERANCE_SECONDS = 300  # the specification's suggested replay window


def expected_signature(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass
class Received:
    """One request: its headers' claims, its body, and whether its signature verified."""

    webhook_id: str
    timestamp: int
    arrived: float
    valid_signature: bool
    document: dict[str, Any]


@dataclass
class Receiver:
    secret: str = ""
    fail_first: int = 0
    fail_always: bool = False
    # The Nth accepted delivery (1-based) is held open until `release` is set; 0 holds none.
    hold_delivery: int = 0
    requests: list[Received] = field(default_factory=list)
    accepted: dict[str, Received] = field(default_factory=dict)
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        webhook_id = request.headers["webhook-id"]
        timestamp = request.headers["webhook-timestamp"]
        signatures = [
            part.removeprefix("v1,") for part in request.headers["webhook-signature"].split(" ") if part
        ]
        valid = any(
            hmac.compare_digest(candidate, expected_signature(self.secret, webhook_id, timestamp, body))
            for candidate in signatures
        )
        received = Received(webhook_id, int(timestamp), time.time(), valid, json.loads(body))
        self.requests.append(received)
        if self.fail_always or len(self.requests) <= self.fail_first:
            return Response(status_code=503)
        if not valid or abs(received.arrived - received.timestamp) > TOLERANCE_SECONDS:
            return Response(status_code=400)
        if webhook_id not in self.accepted:
            if len(self.accepted) + 1 == self.hold_delivery and not self.release.is_set():
                self.holding.set()
                await self.release.wait()
                return Response(status_code=503)
            self.accepted[webhook_id] = received
        return Response(status_code=204)

    def accepted_event_ids(self) -> list[str]:
        """The events accepted, once each, in the order they first arrived."""
        return [received.document["eventId"] for received in self.accepted.values()]

    def attempts(self, webhook_id: str) -> int:
        return sum(1 for received in self.requests if received.webhook_id == webhook_id)


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    """`receiver` served on a free loopback port (its `url` set) until the block ends."""
    port = free_port()
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        receiver.url = f"http://127.0.0.1:{port}/hook"
        yield receiver
    finally:
        receiver.release.set()
        server.should_exit = True
        await task
