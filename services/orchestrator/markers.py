"""The Redis keys that say which rounds exist, so that a round outlives the process driving it.

Keys, under the deployment's Redis prefix (all `orchestrator:`):
- `queue:<conversation>`: the messages waiting for a round, oldest first (each a sealed RoundJob,
  round_jobs.py; they expire with QUEUE_SECONDS);
- `round:<conversation>`: a hash naming the round in flight: `job` (its sealed RoundJob), `turn_id`
  (the turn in flight, "" between turns; the turns of a CHOREOGRAPHY round, which run at once,
  separated by spaces) and `ending` ("<reason> <turns>" once the round is over and only its
  RoundCompleted is left to write, else "");
- `rounds`: the conversations with a round in flight or queued, which every process sweeps;
- `accepted:<conversation>:<message>`: "<sequence> <event id>" of a message's MessageAccepted,
  written in the same step as that event (event_log.append_once), so a message gets one.

The marker is never missing while a round can cost anything: the first round's is written with
the lease (lease.py, before any quota is held), and a queued round's is written in the same step
that takes the job off the queue (POP_INTO_MARKER). A process that dies anywhere therefore leaves
either a queued job or a marker, and the sweep (sweeper.py) finds either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final, cast

import redis.asyncio as aioredis
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.lease import Lease, LeaseLost, LeaseNote, lease_key
from services.orchestrator.round_jobs import RoundJobCodec
from services.orchestrator.rounds import RoundJob
from services.runtime.redis_client import text_of

ACCEPTED_SECONDS: Final = 24 * 3600
QUEUE_SECONDS: Final = 3600

# KEYS: queue, marker. The next queued job, written as the round in flight in the same step: a
# process that dies between the two would otherwise lose an accepted message's round.
_POP_INTO_MARKER: Final = """
local job = redis.call('LPOP', KEYS[1])
if not job then return false end
redis.call('HSET', KEYS[2], 'job', job, 'turn_id', '', 'ending', '')
return job
"""

# KEYS: lease, queue, marker, watched set. ARGV: holder, conversation. A round is over (its
# RoundCompleted written): the queue's next job becomes the round in flight, or, with none queued,
# the marker goes, the lease is released and the conversation leaves the swept set, all in one
# step. A client that sends its next message the moment it reads RoundCompleted thus finds either
# the lease free or a queued round in flight, never a driver still letting go. Nothing is touched
# unless the lease is still the holder's (the new holder's marker is its own). Answers {1, job},
# {0} once let go, or false when the lease was lost.
_HAND_ON: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local job = redis.call('LPOP', KEYS[2])
if job then
  redis.call('HSET', KEYS[3], 'job', job, 'turn_id', '', 'ending', '')
  return {1, job}
end
redis.call('DEL', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[4], ARGV[2])
return {0}
"""

# KEYS: watched set, marker, queue. ARGV: conversation. The conversation leaves the swept set only
# while it has no round in flight and none queued, checked in the same step: a driver letting go
# would otherwise remove the entry the next round's lease had just written (a client sends its next
# message the moment it reads RoundCompleted), and a crash of that round would go unswept.
_FORGET_IF_IDLE: Final = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('LLEN', KEYS[3]) > 0 then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""


@dataclass(frozen=True)
class Marker:
    """A round in flight as its marker says: its job, its turns in flight, and how it ended."""

    job: RoundJob
    # One turn, none between turns, or a CHOREOGRAPHY round's turns, all in flight at once.
    turn_ids: tuple[str, ...]
    # (reason, turns) once the round is over and only its RoundCompleted may be missing.
    ending: tuple[pb.RoundEndReason.ValueType, int] | None


class RoundMarkers:
    def __init__(self, redis: aioredis.Redis, prefix: str, jobs: RoundJobCodec) -> None:
        self._redis = redis
        self._deployment = prefix
        self._prefix = f"{prefix}orchestrator:"
        self.jobs = jobs
        self._pop = redis.register_script(_POP_INTO_MARKER)
        self._forget = redis.register_script(_FORGET_IF_IDLE)
        self._hand_on = redis.register_script(_HAND_ON)

    # -- keys

    def queue(self, conversation_id: str) -> str:
        return f"{self._prefix}queue:{conversation_id}"

    def marker(self, conversation_id: str) -> str:
        return f"{self._prefix}round:{conversation_id}"

    def accepted(self, conversation_id: str, message_id: str) -> str:
        return f"{self._prefix}accepted:{conversation_id}:{message_id}"

    @property
    def active(self) -> str:
        return f"{self._prefix}rounds"

    async def accepted_value(self, conversation_id: str, message_id: str) -> str | None:
        """ "<sequence> <event id>" of the message's MessageAccepted, or None before it."""
        value = await self._redis.get(self.accepted(conversation_id, message_id))
        return None if value is None else text_of(value)

    # -- the round in flight

    def note(self, job: RoundJob) -> LeaseNote:
        """The marker of `job`'s round, for the lease to write as it is taken (lease.py)."""
        return LeaseNote(self.marker(job.conversation_id), self.active, self.jobs.encode(job), time.time())

    async def read(self, conversation_id: str) -> Marker | None:
        # Replies are bytes (the client is made with decode_responses=False).
        fields = cast(dict[bytes, bytes], await self._redis.hgetall(self.marker(conversation_id)))
        if not fields or b"job" not in fields:
            return None
        ending_text = text_of(fields.get(b"ending", b""))
        ending = None
        if ending_text:
            reason, turns = ending_text.split(" ", 1)
            ending = (pb.RoundEndReason.ValueType(int(reason)), int(turns))
        turn_ids = tuple(text_of(fields.get(b"turn_id", b"")).split())
        return Marker(self.jobs.decode(fields[b"job"]), turn_ids, ending)

    async def turn(self, conversation_id: str, *turn_ids: str) -> None:
        await self._redis.hset(self.marker(conversation_id), "turn_id", " ".join(turn_ids))

    async def ending(self, conversation_id: str, reason: pb.RoundEndReason.ValueType, turns: int) -> None:
        await self._redis.hset(
            self.marker(conversation_id), mapping={"turn_id": "", "ending": f"{int(reason)} {turns}"}
        )

    async def clear(self, conversation_id: str) -> None:
        await self._redis.delete(self.marker(conversation_id))

    async def hand_on(self, lease: Lease) -> RoundJob | None:
        """After a round's RoundCompleted: the queue's next job, now the round in flight under
        `lease`; or None, the marker cleared, `lease` released and the conversation no longer
        swept (see _HAND_ON). LeaseLost, with nothing touched, if `lease` is no longer current."""
        conversation_id = lease.conversation_id
        keys = [
            lease_key(self._deployment, conversation_id),
            self.queue(conversation_id),
            self.marker(conversation_id),
            self.active,
        ]
        reply = await self._hand_on(keys=keys, args=[lease.holder, conversation_id])
        if reply is None:
            raise LeaseLost(f"conversation {conversation_id}: the lease is no longer this driver's")
        return self.jobs.decode(reply[1]) if int(reply[0]) else None

    # -- the queue

    async def push(self, job: RoundJob) -> None:
        """Queue `job`, and its conversation among those the sweep watches, in one step."""
        queue = self.queue(job.conversation_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(queue, self.jobs.encode(job))
        pipe.expire(queue, QUEUE_SECONDS)
        pipe.zadd(self.active, {job.conversation_id: time.time()})
        await pipe.execute()

    async def next(self, conversation_id: str) -> RoundJob | None:
        """The next queued job, now the round in flight (its marker written with the pop)."""
        data = await self._pop(keys=[self.queue(conversation_id), self.marker(conversation_id)])
        return None if data is None else self.jobs.decode(data)

    async def drop_queue(self, conversation_id: str) -> None:
        await self._redis.delete(self.queue(conversation_id))

    async def waiting(self, conversation_id: str) -> int:
        return int(await self._redis.llen(self.queue(conversation_id)))

    async def forget(self, conversation_id: str) -> None:
        """The sweep need not look at this conversation, unless a round is in flight or queued."""
        keys = [self.active, self.marker(conversation_id), self.queue(conversation_id)]
        await self._forget(keys=keys, args=[conversation_id])

    async def swept(self) -> list[str]:
        members = cast(list[bytes], await self._redis.zrange(self.active, 0, -1))
        return [text_of(member) for member in members]
