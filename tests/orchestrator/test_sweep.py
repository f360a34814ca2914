"""The sweep closes a round whose driver died as it ended: RoundCompleted written once, never twice."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import pytest
import redis.asyncio as aioredis
from macp.common.v1 import principal_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.control import ControlBus
from services.orchestrator.downstream import Downstream
from services.orchestrator.driver import Driver
from services.orchestrator.event_log import EventLog
from services.orchestrator.lease import Leases
from services.orchestrator.markers import RoundMarkers
from services.orchestrator.round_jobs import RoundJobCodec
from services.orchestrator.rounds import RoundJob
from services.orchestrator.settings import SEALING_KEY, OrchestratorSettings
from services.runtime.principal import Caller
from services.runtime.sealing import Sealer
from services.runtime.settings import Env

pytestmark = pytest.mark.integration


async def _ending_round(redis: aioredis.Redis, prefix: str, events: EventLog) -> tuple[Driver, RoundJob]:
    settings = OrchestratorSettings.from_env(Env({SEALING_KEY: secrets.token_urlsafe(32)}))
    # The sweep of an ending round calls no other service: the mesh address is never reached.
    downstream = Downstream("127.0.0.1:9", settings)
    driver = Driver(
        redis,
        prefix,
        downstream,
        events,
        Leases(redis, prefix, "sweeper"),
        ControlBus(redis, prefix),
        settings,
    )
    conversation_id = str(uuid.uuid4())
    job = RoundJob(
        Caller("token", principal_pb2.Principal(tenant_id="acme")),
        conversation_id,
        str(uuid.uuid4()),
        "hi",
        1,
    )
    job_text = RoundJobCodec(Sealer(settings.sealing_key)).encode(job)
    ending = f"{pb.ROUND_END_REASON_TURN_LIMIT} 1"
    marker = f"{prefix}orchestrator:round:{conversation_id}"
    await redis.hset(marker, mapping={"job": job_text, "turn_id": "", "ending": ending})
    await redis.zadd(f"{prefix}orchestrator:rounds", {conversation_id: time.time()})
    # The message was accepted (its MessageAccepted and its `accepted` key are written together).
    await redis.set(f"{prefix}orchestrator:accepted:{conversation_id}:{job.message_id}", "1 0-1")
    return driver, job


def accepted(job: RoundJob) -> pb.ConversationEvent:
    return pb.ConversationEvent(message_accepted=pb.MessageAccepted(message_id=job.message_id, sequence=1))


async def settled(redis: aioredis.Redis, prefix: str, job: RoundJob) -> None:
    """Until the takeover the sweep started (a task of its own) has cleared the round's marker."""
    for _ in range(200):
        if not await redis.exists(f"{prefix}orchestrator:round:{job.conversation_id}"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the takeover never cleared the round's marker")


async def rounds_completed(events: EventLog, conversation_id: str) -> list[pb.RoundCompleted]:
    return [
        e.round_completed for e in await events.read(conversation_id, "0-0") if e.HasField("round_completed")
    ]


async def test_an_ending_round_without_its_round_completed_gets_one(
    redis: aioredis.Redis, prefix: str
) -> None:
    events = EventLog(redis, prefix)
    driver, job = await _ending_round(redis, prefix, events)
    await events.append(job.conversation_id, accepted(job))
    await driver.sweep()
    await settled(redis, prefix, job)
    completed = await rounds_completed(events, job.conversation_id)
    # With the reason and turn count its driver noted as the round ended.
    assert [(c.trigger_message_id, c.reason, c.turn_count) for c in completed] == [
        (job.message_id, pb.ROUND_END_REASON_TURN_LIMIT, 1)
    ]
    assert not await redis.exists(f"{prefix}orchestrator:round:{job.conversation_id}")
    await driver.sweep()  # nothing left to close
    assert len(await rounds_completed(events, job.conversation_id)) == 1


async def test_an_ending_round_whose_round_completed_got_out_is_not_closed_twice(
    redis: aioredis.Redis, prefix: str
) -> None:
    events = EventLog(redis, prefix)
    driver, job = await _ending_round(redis, prefix, events)
    done = pb.RoundCompleted(trigger_message_id=job.message_id, reason=pb.ROUND_END_REASON_TURN_LIMIT)
    await events.append(job.conversation_id, accepted(job))
    await events.append(job.conversation_id, pb.ConversationEvent(round_completed=done))
    await driver.sweep()
    await settled(redis, prefix, job)
    completed = await rounds_completed(events, job.conversation_id)
    assert [c.reason for c in completed] == [pb.ROUND_END_REASON_TURN_LIMIT]


async def test_a_conversation_leaves_the_sweep_only_while_nothing_is_in_flight_or_queued(
    redis: aioredis.Redis, prefix: str
) -> None:
    """A driver letting go forgets its conversation; if the next message's lease has written its
    round's marker meanwhile (or a message is queued), the conversation stays swept."""
    settings = OrchestratorSettings.from_env(Env({SEALING_KEY: secrets.token_urlsafe(32)}))
    markers = RoundMarkers(redis, prefix, RoundJobCodec(Sealer(settings.sealing_key)))
    job = RoundJob(
        Caller("token", principal_pb2.Principal(tenant_id="acme")), str(uuid.uuid4()), "m1", "hi", 1
    )
    leases = Leases(redis, prefix, "next-driver")
    assert await leases.acquire(job.conversation_id, markers.note(job)) is not None
    await markers.forget(job.conversation_id)
    assert await markers.swept() == [job.conversation_id]
    await markers.clear(job.conversation_id)
    await markers.push(job)
    await markers.forget(job.conversation_id)
    assert await markers.swept() == [job.conversation_id]
    assert await markers.next(job.conversation_id) == job
    await markers.clear(job.conversation_id)
    await markers.forget(job.conversation_id)
    assert await markers.swept() == []
