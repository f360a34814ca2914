"""What the edge remembers of each A2A task, in Redis so that every edge process serves every task.

A task is a round (services/edge/a2a/__init__.py); the round itself lives in the orchestrator's
event log and the conversation's stored messages. A record only says where to find it: the
tenant, the agent the task was sent to, the conversation (the task's context), the user message
that started the round and its MessageAccepted event (where the round's events start). A refused
message starts no round; its record says why (the task is REJECTED). Once any reader sees the
round end, the final task is stored with the record too, so a task outlives the event log's
retention.

Keys are scoped by tenant: another tenant's task id finds nothing, which the caller is told as
TaskNotFound, as for an id that never existed. Each agent, and each context of an agent, keeps a
sorted set of its tasks by creation time for ListTasks. Records expire `ttl_seconds` after their
creation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from a2a.types import a2a_pb2 as a2a

from services.runtime.redis_client import text_of


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    tenant_id: str
    agent_id: str
    conversation_id: str
    # The user message that started the round (the task id is derived from it).
    message_id: str
    # The message's MessageAccepted event: the round's events come after it. Empty when refused.
    event_id: str
    # The message's position in the conversation (0 when refused).
    sequence: int
    # When the task was created, in microseconds since the epoch (its place in the indexes).
    created_us: int
    # The user message's text (the task's history).
    text: str
    # Why the message was refused (the task is REJECTED), or empty.
    rejection: str = ""


class TaskRecords:
    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}edge:a2a:"
        self._ttl_seconds = ttl_seconds

    def _record_key(self, tenant_id: str, task_id: str) -> str:
        return f"{self._prefix}task:{tenant_id}:{task_id}"

    def _final_key(self, tenant_id: str, task_id: str) -> str:
        return f"{self._prefix}final:{tenant_id}:{task_id}"

    def _index_key(self, tenant_id: str, agent_id: str, context_id: str = "") -> str:
        return f"{self._prefix}tasks:{tenant_id}:{agent_id}:{context_id}"

    async def save(self, record: TaskRecord) -> TaskRecord:
        """Stores `record` unless the task is already known (a retried message): answers the
        record that holds, the first one."""
        key = self._record_key(record.tenant_id, record.task_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(key, orjson.dumps(asdict(record)), ex=self._ttl_seconds, nx=True)
        pipe.get(key)
        for index in (
            self._index_key(record.tenant_id, record.agent_id),
            self._index_key(record.tenant_id, record.agent_id, record.conversation_id),
        ):
            pipe.zadd(index, {record.task_id: record.created_us}, nx=True)
            pipe.expire(index, self._ttl_seconds)
            # Members older than the records' lifetime have no record left to show.
            pipe.zremrangebyscore(index, "-inf", now_us() - self._ttl_seconds * 1_000_000)
        _created, stored, *_ = await pipe.execute()
        return _record(stored)

    async def get(self, tenant_id: str, task_id: str) -> TaskRecord | None:
        stored = await self._redis.get(self._record_key(tenant_id, task_id))
        return None if stored is None else _record(stored)

    async def page(
        self, tenant_id: str, agent_id: str, context_id: str, before_us: int | None, size: int
    ) -> tuple[list[TaskRecord], int]:
        """Up to `size` of the agent's tasks (in `context_id`, or all when empty), newest first,
        created before `before_us` (all when None), and how many there are in all."""
        index = self._index_key(tenant_id, agent_id, context_id)
        highest: str = "+inf" if before_us is None else f"({before_us}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrevrangebyscore(index, highest, "-inf", start=0, num=size)
        pipe.zcard(index)
        ids, total = await pipe.execute()
        if not ids:
            return [], int(total)
        stored = await self._redis.mget([self._record_key(tenant_id, text_of(task_id)) for task_id in ids])
        return [_record(value) for value in stored if value is not None], int(total)

    async def final(self, tenant_id: str, task_id: str) -> a2a.Task | None:
        """The task as it ended, once a reader saw it end; None before."""
        stored = await self._redis.get(self._final_key(tenant_id, task_id))
        return None if stored is None else a2a.Task.FromString(cast(bytes, stored))

    async def keep_final(self, record: TaskRecord, task: a2a.Task) -> None:
        """Keeps the ended task for as long as its record lives."""
        remaining_ms = (record.created_us + self._ttl_seconds * 1_000_000 - now_us()) // 1000
        if remaining_ms > 0:
            await self._redis.set(
                self._final_key(record.tenant_id, record.task_id), task.SerializeToString(), px=remaining_ms
            )


def _record(stored: Any) -> TaskRecord:
    return TaskRecord(**orjson.loads(stored))


def now_us() -> int:
    """Microseconds since the epoch, as records count time (exact in a sorted set's score)."""
    return time.time_ns() // 1000
