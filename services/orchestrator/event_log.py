"""The resumable event log of each conversation: a Redis Stream, bounded in length and in idle time.

Every event of a conversation (message accepted, bids, turn started, token deltas, turn completed,
usage, errors) is appended here first and delivered to clients from here, whichever orchestrator
or edge process they are connected to. Its event id is the stream entry id (`<ms>-<seq>`), which
only grows, so a client that reconnects with the last id it saw gets exactly the events after it:
nothing missed, nothing twice.

Retention is bounded: at most `max_events` per conversation (the oldest are trimmed exactly, in the
append script, which also records the newest trimmed id as the log's floor), and the whole log
expires `idle_seconds` after its last event. A resume from an id below the floor answers
OUT_OF_RANGE instead of silently skipping what was trimmed; the client then re-reads the stored
messages (ConversationService.ListMessages) and joins live. A reader that falls behind the floor
while following gets the same error, which is how a slow client is told it lost events.

Appends by a round's driver carry its lease (services/orchestrator/lease.py): the script refuses
the append unless that lease is still the current one, so a deposed driver cannot publish.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Final, cast

import redis.asyncio as aioredis
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from services.orchestrator.lease import Lease, LeaseLost, lease_key
from services.orchestrator.log_tail import LogTail
from services.runtime.errors import InvalidArgument, OutOfRange, Unavailable
from services.runtime.redis_client import text_of

DEFAULT_MAX_EVENTS: Final = 10_000
DEFAULT_IDLE_SECONDS: Final = 24 * 3600
# How long the tail's blocking read waits, and how long a caught-up follower waits for its word
# before reading anyway. Well under redis-py's default 5 s socket timeout: a blocking read that
# waits as long as the socket allows is cut by the client itself whenever the server is late.
DEFAULT_BLOCK_MS: Final = 2_000
READ_BATCH: Final = 256
FOLLOW_RETRIES: Final = 5
_FIELD: Final = b"e"
_EVENT_ID: Final = re.compile(r"(\d{1,20})-(\d{1,20})")

# KEYS: stream, floor, lease[, once]. ARGV: payload, max_events, idle_seconds, holder ("" when
# unfenced)[, once prefix, once seconds]. Answers {1, id} when appended, false when the lease is
# not the holder's. With a once key the event is appended only if that key is absent, and the key
# is set to "<prefix> <event id>" in the same step: one event per key however many callers race
# (a message's MessageAccepted, appended by its first poster only); {0, value} when it was there.
_APPEND: Final = """
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {0, seen} end
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then return false end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[1])
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[2])
if excess > 0 then
  local trimmed = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
  redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[2])
  redis.call('SET', KEYS[2], trimmed[#trimmed][1])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
if KEYS[4] then redis.call('SET', KEYS[4], ARGV[5] .. ' ' .. id, 'EX', ARGV[6]) end
return {1, id}
"""


# A Redis stream id is two unsigned 64-bit numbers: past them XREAD refuses the id outright.
_EVENT_ID_PART_LIMIT = 2**64


# How far back a takeover looks for the round it closes (round_events): far more events than one
# round writes, and few enough to read in a few milliseconds.
ROUND_SCAN_LIMIT: Final = 5_000


def _position(event_id: str, field: str = "after_event_id") -> tuple[int, int]:
    match = _EVENT_ID.fullmatch(event_id)
    if match is None:
        raise InvalidArgument(f"{field}: {event_id!r} is not an event id of this conversation (<ms>-<seq>)")
    position = int(match.group(1)), int(match.group(2))
    if max(position) >= _EVENT_ID_PART_LIMIT:
        raise InvalidArgument(f"{field}: {event_id!r} is past the largest event id (each part below 2^64)")
    return position


class EventLog:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        idle_seconds: int = DEFAULT_IDLE_SECONDS,
        block_ms: int = DEFAULT_BLOCK_MS,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._max_events = max_events
        self._idle_seconds = idle_seconds
        self._block_ms = block_ms
        self._append = redis.register_script(_APPEND)
        self._tail = LogTail(redis, prefix, block_ms=block_ms)

    def _stream(self, conversation_id: str) -> str:
        return f"{self._prefix}orchestrator:events:{conversation_id}"

    def _floor(self, conversation_id: str) -> str:
        return f"{self._prefix}orchestrator:events-floor:{conversation_id}"

    async def append(
        self, conversation_id: str, event: pb.ConversationEvent, lease: Lease | None = None
    ) -> pb.ConversationEvent:
        """`event` stored as the conversation's next one; returned with its id, conversation and
        time. With `lease`, only while it is current (else LeaseLost, and nothing is stored)."""
        stored = self._stamped(conversation_id, event)
        reply = await self._append(keys=self._keys(conversation_id), args=self._args(stored, lease))
        if reply is None:
            raise LeaseLost(f"conversation {conversation_id}: the lease is no longer this driver's")
        stored.event_id = text_of(reply[1])
        return stored

    async def append_once(
        self,
        conversation_id: str,
        event: pb.ConversationEvent,
        lease: Lease | None,
        once: tuple[str, str, int],
    ) -> tuple[pb.ConversationEvent | None, str]:
        """`event` appended unless the key `once` = (key, value prefix, seconds) is already set;
        the key set to "<prefix> <event id>" in the same step. (the stored event, the key's value)
        when appended, (None, the key's earlier value) when not."""
        key, prefix, seconds = once
        stored = self._stamped(conversation_id, event)
        reply = await self._append(
            keys=[*self._keys(conversation_id), key],
            args=[*self._args(stored, lease), prefix, seconds],
        )
        if reply is None:
            raise LeaseLost(f"conversation {conversation_id}: the lease is no longer this driver's")
        appended, value = int(reply[0]), text_of(reply[1])
        if not appended:
            return None, value
        stored.event_id = value
        return stored, f"{prefix} {value}"

    async def round_events(
        self, conversation_id: str, message_id: str, limit: int = ROUND_SCAN_LIMIT
    ) -> list[pb.ConversationEvent] | None:
        """The events from `message_id`'s MessageAccepted on, oldest first (the events of its
        round, among others); None when that MessageAccepted is not among the newest `limit`."""
        newest_first: list[pb.ConversationEvent] = []
        before = "+"
        while len(newest_first) < limit:
            page = await self._redis.xrevrange(self._stream(conversation_id), max=before, count=READ_BATCH)
            if not page:
                return None
            events = self._decode(
                conversation_id, [(b"", cast(Sequence[tuple[bytes, dict[bytes, bytes]]], page))]
            )
            for event in events:
                newest_first.append(event)
                if event.HasField("message_accepted") and event.message_accepted.message_id == message_id:
                    return newest_first[::-1]
            before = f"({events[-1].event_id}"
        return None

    def _keys(self, conversation_id: str) -> list[str]:
        return [
            self._stream(conversation_id),
            self._floor(conversation_id),
            lease_key(self._prefix, conversation_id),
        ]

    def _args(self, stored: pb.ConversationEvent, lease: Lease | None) -> list[bytes | str | int]:
        return [
            stored.SerializeToString(),
            self._max_events,
            self._idle_seconds,
            lease.holder if lease else "",
        ]

    @staticmethod
    def _stamped(conversation_id: str, event: pb.ConversationEvent) -> pb.ConversationEvent:
        stored = pb.ConversationEvent()
        stored.CopyFrom(event)
        stored.ClearField("event_id")
        stored.conversation_id = conversation_id
        if not stored.HasField("time"):
            stored.time.GetCurrentTime()
        return stored

    async def last_event_id(self, conversation_id: str) -> str:
        """The id of the newest event, or "0-0" when there is none: where a live-only reader starts."""
        newest = await self._redis.xrevrange(self._stream(conversation_id), count=1)
        entry_id = newest[0][0] if newest else None
        return "0-0" if entry_id is None else text_of(entry_id)

    async def last_event(self, conversation_id: str) -> pb.ConversationEvent | None:
        """The newest event, or None when there is none."""
        newest = await self._redis.xrevrange(self._stream(conversation_id), count=1)
        events = self._decode(
            conversation_id, [(b"", cast(Sequence[tuple[bytes, dict[bytes, bytes]]], newest))]
        )
        return events[0] if events else None

    async def read(
        self, conversation_id: str, after_event_id: str, limit: int = READ_BATCH
    ) -> list[pb.ConversationEvent]:
        """Up to `limit` events after `after_event_id`, oldest first, without waiting."""
        position = _position(after_event_id)
        floor, entries = await self._read(conversation_id, after_event_id, limit)
        self._check_retained(after_event_id, position, floor)
        return entries

    async def so_far(self, conversation_id: str, after_event_id: str) -> AsyncIterator[pb.ConversationEvent]:
        """The events after `after_event_id` up to the newest one logged when called, without
        waiting for more: the log as it stands (StreamEvents' `until_now`)."""
        end = _position(await self.last_event_id(conversation_id), "the log's newest event id")
        cursor = after_event_id
        position = _position(cursor)
        while position < end:
            floor, entries = await self._read(conversation_id, cursor, READ_BATCH)
            self._check_retained(after_event_id, position, floor)
            for event in entries:
                if _position(event.event_id) > end:
                    return
                yield event
            if len(entries) < READ_BATCH:
                return
            cursor = entries[-1].event_id
            position = _position(cursor)

    async def follow(
        self, conversation_id: str, after_event_id: str = ""
    ) -> AsyncIterator[pb.ConversationEvent]:
        """The events after `after_event_id` (from the very first for "0-0", which fails like any
        id once the log has been trimmed; live ones only when empty), then every new one as it is
        appended, until the caller stops iterating."""
        cursor = after_event_id or await self.last_event_id(conversation_id)
        position = _position(cursor)
        failures = 0
        # While caught up, the process's one blocking read says when there is more (log_tail.py).
        async with self._tail.watching(self._stream(conversation_id), cursor) as news:
            while True:
                news.clear()
                try:
                    floor, entries = await self._read(conversation_id, cursor, READ_BATCH)
                except (RedisTimeout, RedisConnectionError) as exc:
                    # The read is idempotent (it starts after the cursor), so a dropped read is
                    # retried; a Redis that stays away ends the stream as unavailable.
                    failures += 1
                    if failures > FOLLOW_RETRIES:
                        raise Unavailable(f"the conversation's event log is unreachable: {exc}") from None
                    await asyncio.sleep(0.1 * failures)
                    continue
                failures = 0
                self._check_retained(cursor, position, floor)
                for event in entries:
                    yield event
                    cursor = event.event_id
                if entries:
                    position = _position(cursor)
                if len(entries) == READ_BATCH:
                    continue  # more may be waiting already
                # The tail's word, or a re-read now and then whatever it says. (asyncio.wait: the
                # timeout never cancels this generator's own task, only the waiter.)
                waiter = asyncio.ensure_future(news.wait())
                try:
                    await asyncio.wait((waiter,), timeout=self._block_ms / 1000)
                finally:
                    waiter.cancel()

    async def close(self) -> None:
        """Stop the blocking read that serves every follower (they have ended by now)."""
        await self._tail.close()

    async def _read(
        self, conversation_id: str, after: str, limit: int
    ) -> tuple[str | None, list[pb.ConversationEvent]]:
        # One round trip: the floor is read before the entries, so entries trimmed after the floor
        # was read are newer than it and cannot be missed silently.
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._floor(conversation_id))
        pipe.xread({self._stream(conversation_id): after}, count=limit)
        floor, reply = await pipe.execute()
        return (None if floor is None else text_of(floor)), self._decode(conversation_id, reply or [])

    @staticmethod
    def _decode(
        conversation_id: str, reply: Sequence[tuple[bytes, Sequence[tuple[bytes, dict[bytes, bytes]]]]]
    ) -> list[pb.ConversationEvent]:
        events: list[pb.ConversationEvent] = []
        for _stream, entries in reply:
            for entry_id, fields in entries:
                event = pb.ConversationEvent.FromString(fields[_FIELD])
                event.event_id = text_of(entry_id)
                event.conversation_id = conversation_id
                events.append(event)
        return events

    @staticmethod
    def _check_retained(after_event_id: str, position: tuple[int, int], floor: str | None) -> None:
        if floor is not None and position < _position(floor, "floor"):
            raise OutOfRange(
                f"after_event_id {after_event_id} is no longer retained (events up to {floor} were "
                "trimmed): re-read the conversation's messages and join live"
            )
