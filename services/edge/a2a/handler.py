"""The A2A request handler: each A2A operation carried out on MACP's own services, as the caller.

The SDK's dispatcher (services/edge/a2a/routes.py) parses JSON-RPC and calls these methods; they
call the conversation service and the orchestrator with the caller's token, exactly as the REST
and WebSocket routes do, so quota, plan, tenancy and audit are the same for an A2A client as for
any other. Nothing is kept in this process: a task's record is in Redis (task_records.py) and its
state is read from the conversation's event log (rounds.py), so any edge process serves any task.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import Final

import grpc
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.types import a2a_pb2 as a2a
from a2a.utils.errors import (
    ContentTypeNotSupportedError,
    InternalError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.edge.a2a.rounds import TERMINAL_STATES, RoundTask, StreamItem
from services.edge.a2a.task_records import TaskRecord, TaskRecords, now_us
from services.edge.context import EdgeContext
from services.edge.events import event_position, preceding_event_id
from services.runtime.principal import current_caller

# The MACP message id of an A2A message: derived from the conversation and the client's message
# id, so a retried SendMessage is the same message (PostMessage is idempotent by its id).
MESSAGE_NAMESPACE: Final = uuid.UUID("3f6b8a5e-1c2d-4e7f-8a9b-0c1d2e3f4a5b")
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 100
# How long CancelTask waits for the round to say it ended.
CANCEL_WAIT_SECONDS: Final = 10.0
# A refusal of the posted message that makes the task REJECTED rather than an error of the call.
_REFUSED: Final = frozenset(
    {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


@dataclass(frozen=True)
class A2ACall:
    """Who calls which agent: set by the route before the dispatcher runs."""

    edge: EdgeContext
    records: TaskRecords
    agent: conversation_pb.Agent
    tenant_id: str


def _call(context: ServerCallContext) -> A2ACall:
    call = context.state["macp"]
    assert isinstance(call, A2ACall)
    return call


def _text_of(message: a2a.Message) -> str:
    """The text of the user's message: its text parts, joined; other parts are refused by index."""
    texts: list[str] = []
    for index, part in enumerate(message.parts):
        if part.WhichOneof("content") != "text":
            raise ContentTypeNotSupportedError(
                message=f"message.parts[{index}]: only text parts are taken (this agent reads text/plain)"
            )
        texts.append(part.text)
    text = "\n".join(texts)
    if not text.strip():
        raise InvalidParamsError(message="message.parts: the message has no text")
    return text


class MacpRequestHandler(RequestHandler):
    async def on_message_send(self, params: a2a.SendMessageRequest, context: ServerCallContext) -> a2a.Task:
        call = _call(context)
        task = await self._post(call, *await self._message(call, params))
        configuration = params.configuration
        if not task.ended and not configuration.return_immediately:
            async for _item in self._follow(call, task):
                pass
        history = configuration.history_length if configuration.HasField("history_length") else None
        return await self._settled(call, task, history_length=history)

    async def on_message_send_stream(
        self, params: a2a.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        call = _call(context)
        message_id, text, conversation = await self._message(call, params)
        # Following the conversation from now, before the message is posted: the round's first
        # events come on a stream already open (see _follow).
        early = self._open(call, conversation.id, "", until_now=False)
        try:
            task = await self._post(call, message_id, text, conversation)
            yield task.task()
            if task.ended:
                return
            async for item in self._follow(call, task, early):
                yield item
        finally:
            early.cancel()
        await self._settled(call, task)

    async def on_get_task(self, params: a2a.GetTaskRequest, context: ServerCallContext) -> a2a.Task | None:
        call = _call(context)
        record = await self._record(call, params.id)
        history = params.history_length if params.HasField("history_length") else None
        return await self._current(call, record, history_length=history)

    async def on_list_tasks(
        self, params: a2a.ListTasksRequest, context: ServerCallContext
    ) -> a2a.ListTasksResponse:
        call = _call(context)
        size = params.page_size if params.HasField("page_size") else DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidParamsError(message=f"pageSize: 1 to {MAX_PAGE_SIZE} (got {size})")
        before = _page_position(params.page_token)
        include_artifacts = params.include_artifacts if params.HasField("include_artifacts") else False
        history = params.history_length if params.HasField("history_length") else 0
        after = params.status_timestamp_after if params.HasField("status_timestamp_after") else None
        tasks: list[a2a.Task] = []
        total = 0
        next_token = ""
        # Filters apply after the read, so a page may take several reads to fill.
        while len(tasks) < size:
            records, total = await call.records.page(
                call.tenant_id, call.agent.id, params.context_id, before, size
            )
            for record in records:
                before = record.created_us
                task = await self._current(
                    call, record, include_artifacts=include_artifacts, history_length=history
                )
                if params.status and task.status.state != params.status:
                    continue
                if after is not None and task.status.timestamp.ToMicroseconds() <= after.ToMicroseconds():
                    continue
                tasks.append(task)
                if len(tasks) == size:
                    # A next page only when there is an older task to show on it.
                    older, _ = await call.records.page(
                        call.tenant_id, call.agent.id, params.context_id, record.created_us, 1
                    )
                    next_token = str(record.created_us) if older else ""
                    break
            if len(records) < size:
                break
        return a2a.ListTasksResponse(
            tasks=tasks, next_page_token=next_token, page_size=size, total_size=total
        )

    async def on_cancel_task(
        self, params: a2a.CancelTaskRequest, context: ServerCallContext
    ) -> a2a.Task | None:
        call = _call(context)
        record = await self._record(call, params.id)
        task = await self._replayed(call, record)
        if task is None or task.ended:
            state = a2a.TaskState.Name(task.state if task is not None else a2a.TASK_STATE_COMPLETED)
            raise TaskNotCancelableError(message=f"task {params.id} has ended ({state})")
        # The orchestrator takes a cancel on a Converse stream; the stream stays open until the
        # round has said it ended, so the cancel is surely read before the stream goes.
        converse = call.edge.orchestrator.Converse()
        try:
            await converse.write(
                pb.ConverseRequest(
                    conversation_id=record.conversation_id,
                    cancel=pb.Cancel(reason=f"A2A CancelTask of task {record.task_id}"),
                )
            )
            await converse.done_writing()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_WAIT_SECONDS):
                    async for _item in self._follow(call, task):
                        pass
        finally:
            converse.cancel()
        return await self._settled(call, task)

    async def on_subscribe_to_task(
        self, params: a2a.SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        call = _call(context)
        record = await self._record(call, params.id)
        task = await self._replayed(call, record)
        if task is None or task.ended:
            raise UnsupportedOperationError(
                message=f"task {params.id} has ended: read it with GetTask (a subscription is to a live task)"
            )
        # The task as it stands, then every event after what it was made of: nothing missed.
        yield task.task()
        async for item in self._follow(call, task):
            yield item
        await self._settled(call, task)

    async def on_create_task_push_notification_config(
        self, params: a2a.TaskPushNotificationConfig, context: ServerCallContext
    ) -> a2a.TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError(message=_NO_PUSH)

    async def on_get_task_push_notification_config(
        self, params: a2a.GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> a2a.TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError(message=_NO_PUSH)

    async def on_list_task_push_notification_configs(
        self, params: a2a.ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> a2a.ListTaskPushNotificationConfigsResponse:
        raise PushNotificationNotSupportedError(message=_NO_PUSH)

    async def on_delete_task_push_notification_config(
        self, params: a2a.DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        raise PushNotificationNotSupportedError(message=_NO_PUSH)

    async def on_get_extended_agent_card(
        self, params: a2a.GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> a2a.AgentCard:
        raise UnsupportedOperationError(message="this agent has no extended card: its card is the whole card")

    # What the operations share.

    async def _message(
        self, call: A2ACall, params: a2a.SendMessageRequest
    ) -> tuple[str, str, conversation_pb.Conversation]:
        """The MACP message id, the text and the conversation of an A2A message, refused by field."""
        message = params.message
        if message.role != a2a.ROLE_USER:
            raise InvalidParamsError(message="message.role: an agent is sent ROLE_USER messages")
        if not message.message_id:
            raise InvalidParamsError(message="message.messageId: required")
        text = _text_of(message)
        if message.task_id:
            if await call.records.get(call.tenant_id, message.task_id) is None:
                raise TaskNotFoundError(message=f"message.taskId: no task {message.task_id}")
            raise InvalidParamsError(
                message=(
                    f"message.taskId: task {message.task_id} is one round of its conversation and takes "
                    "no further messages; send a new message with its contextId to go on"
                )
            )
        conversation = await self._conversation(call, message.context_id)
        message_id = str(uuid.uuid5(MESSAGE_NAMESPACE, f"{conversation.id}:{message.message_id}"))
        return message_id, text, conversation

    async def _post(
        self, call: A2ACall, message_id: str, text: str, conversation: conversation_pb.Conversation
    ) -> RoundTask:
        """Posts the message as a user message of the conversation; the task of its round."""
        record = TaskRecord(
            task_id=message_id,
            tenant_id=call.tenant_id,
            agent_id=call.agent.id,
            conversation_id=conversation.id,
            message_id=message_id,
            event_id="",
            sequence=0,
            created_us=now_us(),
            text=text,
        )
        try:
            reply: pb.PostMessageResponse = await call.edge.orchestrator.PostMessage(
                pb.PostMessageRequest(
                    conversation_id=conversation.id,
                    message=pb.UserMessage(message_id=message_id, text=text),
                ),
                timeout=call.edge.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _REFUSED:
                stored = await call.records.save(replace(record, rejection=exc.details() or exc.code().name))
                return RoundTask.rejected(stored)
            raise _a2a_error(exc, "message") from None
        stored = await call.records.save(replace(record, event_id=reply.event_id, sequence=reply.sequence))
        if stored.rejection:
            return RoundTask.rejected(stored)
        return RoundTask(stored, await self._agent_names(call, conversation.participant_agent_ids))

    async def _conversation(self, call: A2ACall, context_id: str) -> conversation_pb.Conversation:
        """The conversation a message goes to: its context, or a new one with the agent alone."""
        conversation_service = call.edge.conversation
        if not context_id:
            created: conversation_pb.CreateConversationResponse = (
                await conversation_service.CreateConversation(
                    conversation_pb.CreateConversationRequest(
                        conversation=conversation_pb.Conversation(
                            title=f"A2A: {call.agent.name}"[:200],
                            participant_agent_ids=[call.agent.id],
                            turn_policy=conversation_pb.TURN_POLICY_ROUND_ROBIN,
                            # One answer per message: the agent alone would otherwise answer itself.
                            limits=conversation_pb.ConversationLimits(max_agent_turns_per_user_message=1),
                            double_texting_policy=conversation_pb.DOUBLE_TEXTING_POLICY_ENQUEUE,
                        )
                    ),
                    timeout=call.edge.timeout,
                )
            )
            return created.conversation
        try:
            found: conversation_pb.GetConversationResponse = await conversation_service.GetConversation(
                conversation_pb.GetConversationRequest(id=context_id), timeout=call.edge.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise InvalidParamsError(message=f"message.contextId: no conversation {context_id}") from None
            raise _a2a_error(exc, "message.contextId") from None
        if call.agent.id not in found.conversation.participant_agent_ids:
            raise InvalidParamsError(
                message=(f"message.contextId: agent {call.agent.id} is not in conversation {context_id}")
            )
        return found.conversation

    async def _agent_names(self, call: A2ACall, agent_ids: Iterable[str]) -> dict[str, str]:
        """Each agent's name (the name of its artifacts); its id for one that cannot be read."""
        names = {call.agent.id: call.agent.name}

        async def name_of(agent_id: str) -> tuple[str, str]:
            try:
                found: conversation_pb.GetAgentResponse = await call.edge.conversation.GetAgent(
                    conversation_pb.GetAgentRequest(id=agent_id), timeout=call.edge.timeout
                )
            except grpc.aio.AioRpcError:
                return agent_id, agent_id
            return agent_id, found.agent.name

        names.update(await asyncio.gather(*(name_of(agent_id) for agent_id in set(agent_ids) - set(names))))
        return names

    async def _record(self, call: A2ACall, task_id: str) -> TaskRecord:
        record = await call.records.get(call.tenant_id, task_id) if task_id else None
        if record is None or record.agent_id != call.agent.id:
            raise TaskNotFoundError(message=f"no task {task_id!r} of this agent")
        return record

    def _open(
        self, call: A2ACall, conversation_id: str, after_event_id: str, *, until_now: bool
    ) -> EventStream:
        request = pb.StreamEventsRequest(
            conversation_id=conversation_id, after_event_id=after_event_id, until_now=until_now
        )
        return call.edge.orchestrator.StreamEvents(request, timeout=call.edge.timeout if until_now else None)

    async def _events(
        self, call: A2ACall, task: RoundTask, *, until_now: bool, opened: EventStream | None = None
    ) -> AsyncIterator[pb.ConversationEvent]:
        """The conversation's events after where `task` stands (on `opened`, when a stream was
        opened for it already), until the caller stops (or the log's end, `until_now`)."""
        stream = opened or self._open(
            call, task.record.conversation_id, task.last_event_id, until_now=until_now
        )
        # A stream that follows is an open stream of the edge's: it ends when its token is revoked
        # (services/edge/open_streams.py), as the SSE and WebSocket streams do.
        watch = _RevocationWatch(stream)
        jti = current_caller().principal.token_id
        if not until_now:
            call.edge.open_streams.watch(jti, watch)
        try:
            async for response in stream:
                yield response.event
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            # The watch cancels the call: reading a cancelled call raises CancelledError here.
            if watch.revoked:
                raise InternalError(
                    message="UNAUTHENTICATED: the token was revoked; reconnect with a valid one"
                ) from exc
            raise
        finally:
            if not until_now:
                call.edge.open_streams.unwatch(jti, watch)
            stream.cancel()

    async def _follow(
        self, call: A2ACall, task: RoundTask, early: EventStream | None = None
    ) -> AsyncIterator[StreamItem]:
        """The task's A2A events from where `task` stands until its round ends.

        `early`: a live stream of the conversation opened before the message was posted, so that
        the round's first events are not kept waiting for a stream opened after it. It serves if
        it started at or before where `task` stands (its first event is no later than the
        message's acceptance); otherwise a stream from there is opened, and nothing is missed."""
        start = event_position(task.last_event_id)
        try:
            if early is not None:
                covered = False
                async for event in self._events(call, task, until_now=False, opened=early):
                    position = event_position(event.event_id)
                    if not covered:
                        if position > start:
                            break  # it began after the acceptance: events may lie between
                        covered = True
                    if position <= start:
                        continue  # from before the acceptance: the task has them already
                    for item in task.apply(event):
                        yield item
                    if task.ended:
                        return
            async for event in self._events(call, task, until_now=False):
                for item in task.apply(event):
                    yield item
                if task.ended:
                    return
        except grpc.aio.AioRpcError as exc:
            raise _a2a_error(exc, "id") from None

    async def _replayed(self, call: A2ACall, record: TaskRecord) -> RoundTask | None:
        """The task as the conversation's log has it now; None once the log no longer holds its
        start (the stored final task tells it then, if a reader saw it end)."""
        if record.rejection:
            return RoundTask.rejected(record)
        task = RoundTask(record, {call.agent.id: call.agent.name})
        task.last_event_id = preceding_event_id(record.event_id)
        try:
            async for event in self._events(call, task, until_now=True):
                task.apply(event)
                if task.ended:
                    break
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                return None
            raise _a2a_error(exc, "id") from None
        task.name_agents(await self._agent_names(call, task.speakers()))
        return task

    async def _current(
        self,
        call: A2ACall,
        record: TaskRecord,
        *,
        include_artifacts: bool = True,
        history_length: int | None = None,
    ) -> a2a.Task:
        final = await call.records.final(call.tenant_id, record.task_id)
        if final is not None:
            return _trimmed(final, include_artifacts, history_length)
        task = await self._replayed(call, record)
        if task is None:
            raise TaskNotFoundError(
                message=(
                    f"task {record.task_id}: its round's events are no longer kept and it was not seen to end"
                )
            )
        if task.ended:
            await call.records.keep_final(record, task.task())
        return task.task(include_artifacts=include_artifacts, history_length=history_length)

    async def _settled(
        self, call: A2ACall, task: RoundTask, *, history_length: int | None = None
    ) -> a2a.Task:
        """The task as it stands after following it; kept as final when it ended."""
        if task.ended:
            await call.records.keep_final(task.record, task.task())
        return task.task(history_length=history_length)


# A live stream of a conversation's events, as StreamEvents answers it.
EventStream = grpc.aio.UnaryStreamCall[pb.StreamEventsRequest, pb.StreamEventsResponse]

_NO_PUSH: Final = (
    "push notifications are not offered: follow a task with SendStreamingMessage or SubscribeToTask"
)


class _RevocationWatch:
    """Ends a followed stream when its token is revoked (open_streams.py's `Revocable`)."""

    def __init__(
        self, stream: grpc.aio.UnaryStreamCall[pb.StreamEventsRequest, pb.StreamEventsResponse]
    ) -> None:
        self._stream = stream
        self.revoked = False

    def token_revoked(self) -> None:
        self.revoked = True
        self._stream.cancel()


def _page_position(token: str) -> int | None:
    if not token:
        return None
    if not token.isdigit() or len(token) > 20:
        raise InvalidParamsError(
            message="pageToken: not a page token of this list (use nextPageToken as given)"
        )
    return int(token)


def _trimmed(task: a2a.Task, include_artifacts: bool, history_length: int | None) -> a2a.Task:
    shown = a2a.Task()
    shown.CopyFrom(task)
    if not include_artifacts:
        del shown.artifacts[:]
    if history_length == 0:
        del shown.history[:]
    return shown


def _a2a_error(exc: grpc.aio.AioRpcError, field: str) -> Exception:
    """An RPC failure as the A2A error a client can act on: its own input named, else internal."""
    details = exc.details() or exc.code().name
    if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return InvalidParamsError(message=f"{field}: {details}")
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return TaskNotFoundError(message=details)
    return InternalError(message=f"{exc.code().name}: {details}")


__all__ = ["TERMINAL_STATES", "A2ACall", "MacpRequestHandler"]
