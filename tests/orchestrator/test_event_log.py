"""The conversation event log against a real Redis: ordered ids, exact resume, bounded retention that
says OUT_OF_RANGE instead of skipping, and live following from any process."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
import redis.asyncio as aioredis
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.event_log import EventLog
from services.runtime.errors import InvalidArgument, OutOfRange
from services.runtime.redis_client import create_redis
from services.runtime.settings import RedisSettings

pytestmark = pytest.mark.integration


def _delta(index: int) -> pb.ConversationEvent:
    return pb.ConversationEvent(token_delta=pb.TokenDelta(text=f"t{index}", index=index))


async def test_a_resume_from_any_id_gets_exactly_the_events_after_it(
    redis: aioredis.Redis, prefix: str
) -> None:
    log, conversation = EventLog(redis, prefix), str(uuid.uuid4())
    stored = [await log.append(conversation, _delta(index)) for index in range(50)]
    ids = [event.event_id for event in stored]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert len(set(ids)) == 50
    for cut in (0, 1, 17, 49):
        after = await log.read(conversation, ids[cut], limit=100)
        assert [event.token_delta.index for event in after] == list(range(cut + 1, 50))
        assert all(event.conversation_id == conversation and event.HasField("time") for event in after)
    assert [e.event_id for e in await log.read(conversation, "0-0", limit=100)] == ids


async def test_trimmed_events_answer_out_of_range_never_a_silent_gap(
    redis: aioredis.Redis, prefix: str
) -> None:
    log, conversation = EventLog(redis, prefix, max_events=10), str(uuid.uuid4())
    ids = [(await log.append(conversation, _delta(index))).event_id for index in range(25)]
    assert await redis.xlen(f"{prefix}orchestrator:events:{conversation}") == 10
    # The newest trimmed id is still a valid place to resume from: nothing after it was lost.
    resumed = await log.read(conversation, ids[14])
    assert [event.token_delta.index for event in resumed] == list(range(15, 25))
    for lost in (ids[0], ids[13], "0-0"):
        with pytest.raises(OutOfRange, match="no longer retained"):
            await log.read(conversation, lost)


async def test_a_malformed_id_is_refused_naming_the_field(redis: aioredis.Redis, prefix: str) -> None:
    log = EventLog(redis, prefix)
    for bad in ("", "12", "a-1", "1-2-3", f"{2**64}-0", f"0-{2**64}"):
        with pytest.raises(InvalidArgument, match="after_event_id"):
            await log.read(str(uuid.uuid4()), bad)
        if bad:  # a follower is refused the same way (the empty id means "from now on")
            with pytest.raises(InvalidArgument, match="after_event_id"):
                await anext(aiter(log.follow(str(uuid.uuid4()), bad)))


async def test_followers_in_other_processes_see_live_events_in_order(
    redis: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    conversation = str(uuid.uuid4())
    writer = EventLog(redis, prefix)
    before = await writer.append(conversation, _delta(0))
    # Each follower has its own client, as an edge process elsewhere would.
    readers = [aioredis.from_url(redis_url) for _ in range(2)]
    try:

        async def follow(client: aioredis.Redis, after: str, count: int) -> list[int]:
            """What the follower saw: `count` events, or what came within 5 s (the assert shows it)."""
            seen: list[int] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    async for event in EventLog(client, prefix, block_ms=200).follow(conversation, after):
                        seen.append(event.token_delta.index)
                        if len(seen) == count:
                            break
            return seen

        blocked_before = await _blocked_reads(redis)
        live = asyncio.create_task(follow(readers[0], "", 5))
        replaying = asyncio.create_task(follow(readers[1], before.event_id, 5))
        # Both caught up and waiting: each one's tail is in its blocking read (a live-only follower
        # that started after the first append would rightly never see it).
        for _ in range(250):
            if await _blocked_reads(redis) >= blocked_before + 2:
                break
            await asyncio.sleep(0.02)
        for index in range(1, 6):
            await writer.append(conversation, _delta(index))
        assert await live == [1, 2, 3, 4, 5]
        assert await replaying == [1, 2, 3, 4, 5]
    finally:
        for client in readers:
            await client.aclose()


async def test_a_follower_left_behind_by_trimming_is_told_so(redis: aioredis.Redis, prefix: str) -> None:
    conversation = str(uuid.uuid4())
    log = EventLog(redis, prefix, max_events=5, block_ms=100)
    first = await log.append(conversation, _delta(0))
    for index in range(1, 20):
        await log.append(conversation, _delta(index))
    with pytest.raises(OutOfRange):
        async for _ in log.follow(conversation, first.event_id):
            pass


async def test_a_hundred_followers_of_a_hundred_conversations_share_one_blocking_read(
    redis_url: str, prefix: str
) -> None:
    # Ten connections for the whole process: a blocking read per follower would need a hundred.
    client = create_redis(RedisSettings(redis_url, prefix, max_connections=10))
    log = EventLog(client, prefix, block_ms=2_000)
    conversations = [str(uuid.uuid4()) for _ in range(100)]
    try:

        async def first_event(conversation: str) -> int:
            async for event in log.follow(conversation):
                return event.token_delta.index
            raise AssertionError("follow ended")

        followers = [asyncio.create_task(first_event(c)) for c in conversations]
        await asyncio.sleep(0.5)  # every follower caught up and waiting
        started = time.monotonic()
        for index, conversation in enumerate(conversations):
            await log.append(conversation, _delta(index))
        assert await asyncio.wait_for(asyncio.gather(*followers), 5) == list(range(100))
        # Word came from the shared read, not from each follower's 2 s re-read.
        assert time.monotonic() - started < 1.5
    finally:
        await log.close()
        await client.aclose()


async def test_a_conversation_followed_while_the_tail_blocks_is_heard_at_once(
    redis: aioredis.Redis, prefix: str
) -> None:
    log = EventLog(redis, prefix, block_ms=3_000)
    waiting, joining = str(uuid.uuid4()), str(uuid.uuid4())

    async def first_event(conversation: str) -> float:
        async for _event in log.follow(conversation):
            return time.monotonic()
        raise AssertionError("follow ended")

    try:
        early = asyncio.create_task(first_event(waiting))
        await asyncio.sleep(0.3)  # the tail is now blocked on `waiting` alone
        late = asyncio.create_task(first_event(joining))
        await asyncio.sleep(0.3)
        appended = time.monotonic()
        await log.append(joining, _delta(1))
        assert await asyncio.wait_for(late, 5) - appended < 0.5  # the doorbell, not the 3 s timeout
        await log.append(waiting, _delta(2))
        await asyncio.wait_for(early, 5)
        # Nobody follows anything now: the blocking read and its doorbell are gone.
        await asyncio.sleep(0.1)
        assert not [key async for key in redis.scan_iter(f"{prefix}orchestrator:tail:*")]
    finally:
        await log.close()


async def _blocked_reads(redis: aioredis.Redis) -> int:
    """Clients of the server now in a blocking XREAD."""
    return sum(1 for client in await redis.client_list() if client.get("cmd") == "xread")


async def test_so_far_reads_up_to_the_newest_event_and_does_not_wait(
    redis: aioredis.Redis, prefix: str
) -> None:
    log, conversation = EventLog(redis, prefix), str(uuid.uuid4())
    # More than one read batch, so the reader pages through the log.
    ids = [(await log.append(conversation, _delta(index))).event_id for index in range(300)]

    async def so_far(after: str) -> list[int]:
        async with asyncio.timeout(2):  # it ends by itself: nothing is followed
            return [event.token_delta.index async for event in log.so_far(conversation, after)]

    assert await so_far("0-0") == list(range(300))
    assert await so_far(ids[250]) == list(range(251, 300))
    assert await so_far(ids[-1]) == []
    assert [e async for e in log.so_far(str(uuid.uuid4()), "0-0")] == []
    trimmed = EventLog(redis, prefix, max_events=10)
    await trimmed.append(conversation, _delta(300))
    with pytest.raises(OutOfRange, match="no longer retained"):
        await anext(aiter(trimmed.so_far(conversation, ids[0])))
