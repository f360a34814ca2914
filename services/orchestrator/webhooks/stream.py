"""One (subscription, conversation) stream, delivered by the process holding its lease.

It follows the conversation's event log after the stream's cursor like any other follower (the
process's one blocking read wakes it, services/orchestrator/log_tail.py), so it never slows a
round. Each event of a kind the subscription wants is posted until the receiver answers 2xx,
waiting base, 2 x base, 4 x base ... between attempts; at the attempt limit it is dead-lettered.
The cursor moves past an event only once the receiver took it or its dead letter is recorded, so
whatever stops the process mid-delivery leaves the event to the next holder, which posts it again
with the same `webhook-id`. Events the subscription does not want move the cursor too, but their
moves are written at most once a second: a restart re-reads and skips them again.

A successful first attempt is reported to the conversation service at most once a second per
stream (it only refreshes the subscription's last success); every failed attempt is reported,
the dead letter until it is recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import httpx
from google.protobuf.timestamp_pb2 import Timestamp
from macp.conversation.v1 import webhook_service_pb2 as webhook_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.event_log import EventLog
from services.orchestrator.webhooks.cursors import Position, StreamCursors, StreamLease
from services.orchestrator.webhooks.payload import body, webhook_id
from services.orchestrator.webhooks.settings import DeliverySettings
from services.orchestrator.webhooks.signing import signed_headers
from services.orchestrator.webhooks.targets import Target, Targets
from services.runtime.errors import OutOfRange
from services.runtime.webhook_addresses import host_refusal

log = logging.getLogger("macp.orchestrator.webhooks")

# A Redis stream id's parts are below 2^64: the last id of a millisecond.
_LAST_SEQUENCE = 2**64 - 1
# How often a stream's unwanted events' cursor, and its first-attempt successes, are written.
QUIET_WRITE_SECONDS = 1.0
RECORD_RETRY_SECONDS = 1.0


def start_after(created: Timestamp) -> str:
    """The log position just before `created`: a new stream delivers the events logged since its
    subscription was made."""
    return f"{max(created.ToMilliseconds() - 1, 0)}-{_LAST_SEQUENCE}"


@dataclass(frozen=True)
class Outcome:
    """One attempt's answer: delivered, or why not (and the receiver's status, 0 for none)."""

    delivered: bool
    reason: str = ""
    http_status: int = 0


class Poster:
    """POSTs signed deliveries; every failure is an Outcome, never an exception."""

    def __init__(self, http: httpx.AsyncClient, *, loopback_allowed: bool) -> None:
        self._http = http
        self._loopback_allowed = loopback_allowed

    async def post(self, target: Target, delivery_id: str, payload: bytes) -> Outcome:
        url = httpx.URL(target.subscription.url)
        # Resolved before every attempt: a name may come to point inward after it was subscribed.
        refused = await host_refusal(url.host, url.port or 443, loopback_allowed=self._loopback_allowed)
        if refused is not None:
            return Outcome(False, f"not delivered: {refused}; webhooks go to public addresses only")
        headers = signed_headers(target.key, delivery_id, int(time.time()), payload)
        try:
            answer = await self._http.post(target.subscription.url, content=payload, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__)
        if 200 <= answer.status_code < 300:
            return Outcome(True)
        return Outcome(False, f"the receiver answered HTTP {answer.status_code}", answer.status_code)


class Stream:
    def __init__(
        self,
        lease: StreamLease,
        target_of: Callable[[], Target | None],
        *,
        cursors: StreamCursors,
        events: EventLog,
        poster: Poster,
        targets: Targets,
        settings: DeliverySettings,
    ) -> None:
        """`target_of`: the subscription as last read (None once it is gone): a change of its URL or
        kinds applies from the next event."""
        self._lease = lease
        self._target_of = target_of
        self._cursors = cursors
        self._events = events
        self._poster = poster
        self._targets = targets
        self._settings = settings
        self._quiet_written = 0.0
        self._success_reported = 0.0

    async def run(self) -> None:
        target = self._target_of()
        if target is None:
            return
        position = await self._cursors.position(self._lease) or Position(
            start_after(target.subscription.create_time)
        )
        conversation_id = self._lease.conversation_id
        try:
            async for event in self._events.follow(conversation_id, position.after):
                target = self._target_of()
                if target is None:
                    return
                if target.wants(event.WhichOneof("payload") or ""):
                    position = await self._deliver(target, event, position)
                else:
                    position = await self._pass(event, position)
        except OutOfRange:
            # More than the log's retention behind: what was trimmed cannot be delivered any more.
            newest = await self._events.last_event_id(conversation_id)
            log.error(
                "webhook stream fell behind its conversation's log retention; going on from its newest event",
                extra={"subscription_id": self._lease.subscription_id, "conversation_id": conversation_id},
            )
            await self._cursors.write(self._lease, Position(newest))

    async def _pass(self, event: pb.ConversationEvent, position: Position) -> Position:
        moved = Position(event.event_id, position.attempts, position.at)
        if time.monotonic() - self._quiet_written >= QUIET_WRITE_SECONDS:
            await self._cursors.write(self._lease, moved)
            self._quiet_written = time.monotonic()
        return moved

    async def _deliver(self, target: Target, event: pb.ConversationEvent, position: Position) -> Position:
        delivery_id = webhook_id(target.subscription_id, event.conversation_id, event.event_id)
        payload = body(event)
        failures = position.failures_at(event.event_id)
        while True:
            outcome = await self._poster.post(target, delivery_id, payload)
            delivery = webhook_pb.WebhookDelivery(
                id=delivery_id,
                subscription_id=target.subscription_id,
                conversation_id=event.conversation_id,
                event_id=event.event_id,
                event_kind=event.WhichOneof("payload") or "",
                attempts=failures + 1,
                last_failure_reason=outcome.reason,
                last_http_status=outcome.http_status,
            )
            if outcome.delivered:
                done = Position(event.event_id)
                await self._cursors.write(self._lease, done)
                delivery.status = webhook_pb.WEBHOOK_DELIVERY_STATUS_DELIVERED
                await self._report_success(target, delivery)
                return done
            failures += 1
            if failures >= self._settings.attempts:
                delivery.status = webhook_pb.WEBHOOK_DELIVERY_STATUS_DEAD_LETTERED
                await self._record_until_done(target, delivery)
                done = Position(event.event_id)
                await self._cursors.write(self._lease, done)
                return done
            await self._cursors.write(self._lease, Position(position.after, failures, event.event_id))
            delivery.status = webhook_pb.WEBHOOK_DELIVERY_STATUS_RETRYING
            await self._record(target, delivery)
            await asyncio.sleep(self._settings.backoff(failures))

    async def _report_success(self, target: Target, delivery: webhook_pb.WebhookDelivery) -> None:
        if delivery.attempts == 1 and time.monotonic() - self._success_reported < QUIET_WRITE_SECONDS:
            return
        if await self._record(target, delivery):
            self._success_reported = time.monotonic()

    async def _record(self, target: Target, delivery: webhook_pb.WebhookDelivery) -> bool:
        """Report an attempt; a report that fails is only logged (the next one says more)."""
        try:
            await self._targets.record(target.subscription.tenant_id, delivery)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "a webhook delivery attempt could not be recorded",
                extra={"delivery_id": delivery.id, "code": exc.code().name, "detail": exc.details()},
            )
            return False
        return True

    async def _record_until_done(self, target: Target, delivery: webhook_pb.WebhookDelivery) -> None:
        """The dead letter is recorded before the cursor moves past it: asked again until it is."""
        for _attempt in itertools.count():
            if await self._record(target, delivery):
                return
            await asyncio.sleep(RECORD_RETRY_SECONDS)
