"""A turn of an agent of provider `a2a`: the outside A2A agent it is, called with the SDK's client.

The conversation goes as one `SendStreamingMessage`: the message to answer as the message's text,
the turns before it in the message's metadata under HISTORY_KEY (speaker, role, text), the system
prompt beside them. Its context id is the MACP conversation's id, so the remote sees one context per
conversation (a completion outside any conversation gets one of its own). The remote's artifact
updates, and its status messages with text, stream as the turn's text deltas.

Guards: one circuit breaker per remote agent (its failures say nothing of another remote), opened by
failures before any text (the card, the credential, the call, a FAILED or REJECTED task); and a
timeout on the whole answer (`a2a_timeout_seconds`, within the caller's deadline). A failure after
some text ends the turn with FINISH_REASON_ERROR and counts against the breaker too.

Cancelled (the caller's interrupt or cancel ends Generate): the remote is told with `CancelTask` for
its task, so it stops working for no one.

Usage: the remote's own figures when its task's metadata reports them under the A2A usage extension
(services/runtime/a2a_usage.py), else estimated from the characters sent and received and marked
`estimated`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
from a2a.client import A2AClientError, Client, ClientCallContext, ClientConfig, ClientFactory
from a2a.client.service_parameters import ServiceParametersFactory, with_a2a_extensions
from a2a.types import a2a_pb2 as a2a
from a2a.utils.errors import A2AError
from google.protobuf import json_format, struct_pb2
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

from services.agent_proxy.remote_cards import CardFailure, RemoteCards
from services.agent_proxy.remote_credentials import RemoteCredentials
from services.agent_proxy.usage import TurnRecord
from services.runtime.a2a_usage import USAGE_EXTENSION_URI, ReportedUsage, reported_usage
from services.runtime.breaker import BreakerPolicy, CircuitBreaker, Clock
from services.runtime.client_credentials_tokens import CredentialFailure
from services.runtime.errors import Unavailable

log = logging.getLogger("macp.agent_proxy.remote")

A2A = "a2a"
HISTORY_KEY = "urn:macp:a2a:history:v1"
SYSTEM_PROMPT_KEY = "urn:macp:a2a:system-prompt:v1"
# How long a CancelTask may take once the turn is over: it is a courtesy to the remote.
CANCEL_SECONDS = 5.0
TERMINAL = frozenset(
    {
        a2a.TASK_STATE_COMPLETED,
        a2a.TASK_STATE_FAILED,
        a2a.TASK_STATE_CANCELED,
        a2a.TASK_STATE_REJECTED,
        a2a.TASK_STATE_INPUT_REQUIRED,
        a2a.TASK_STATE_AUTH_REQUIRED,
    }
)
FAILED = frozenset({a2a.TASK_STATE_FAILED, a2a.TASK_STATE_REJECTED})
# The A2A message id of a turn: the same turn sends the same message (a remote may de-duplicate).
MESSAGE_NAMESPACE = uuid.UUID("0f5c0e3a-6d1f-4c55-9a53-2f1a4f0d7a21")


class RemoteFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# What a remote's failure may raise, on the way to it or from it: A2AError covers both the SDK's
# transport failures (A2AClientError) and the JSON-RPC errors the remote answers (its executor
# raised: InternalError; a task it does not know: TaskNotFoundError; ...).
REMOTE_FAILURES = (
    CredentialFailure,
    CardFailure,
    RemoteFailure,
    A2AError,
    TimeoutError,
    httpx.HTTPError,
)


def remote_prompt_characters(request: pb.GenerateRequest) -> int:
    return len(request.system_prompt) + sum(len(m.text) + len(m.name) for m in request.messages)


def outgoing_message(request: pb.GenerateRequest) -> a2a.Message:
    """The message the remote answers: the last one's text, the turns before it as metadata."""
    *earlier, last = request.messages
    message = a2a.Message(
        message_id=str(uuid.uuid5(MESSAGE_NAMESPACE, request.turn_id)),
        context_id=request.conversation_id or str(uuid.uuid4()),
        role=a2a.ROLE_USER,
        parts=[a2a.Part(text=last.text)],
    )
    history = [
        {"role": pb.ChatRole.Name(m.role).removeprefix("CHAT_ROLE_").lower(), "name": m.name, "text": m.text}
        for m in earlier
    ]
    message.metadata.update({HISTORY_KEY: history, SYSTEM_PROMPT_KEY: request.system_prompt})
    return message


def _texts(parts: list[a2a.Part]) -> str:
    return "".join(part.text for part in parts if part.text)


class RemoteAgents:
    def __init__(
        self,
        credentials: RemoteCredentials,
        http: httpx.AsyncClient,
        policy: BreakerPolicy,
        clock: Clock,
        card_ttl_seconds: float,
        timeout_seconds: float,
    ) -> None:
        self._credentials = credentials
        self._http = http
        self._cards = RemoteCards(http, card_ttl_seconds)
        self._factory = ClientFactory(ClientConfig(httpx_client=http, streaming=True))
        self._policy = policy
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._timeout = timeout_seconds

    def breaker(self, agent_id: str) -> CircuitBreaker:
        if agent_id not in self._breakers:
            self._breakers[agent_id] = CircuitBreaker(self._policy, self._clock)
        return self._breakers[agent_id]

    def breaker_states(self) -> list[tuple[str, str, str]]:
        """(a2a, agent id, state) of every remote agent called: the breaker metric's rows."""
        breakers = dict(self._breakers)
        return [(A2A, agent_id, breaker.state.value) for agent_id, breaker in sorted(breakers.items())]

    async def close(self) -> None:
        await self._http.aclose()

    async def generate(
        self, request: pb.GenerateRequest, record: TurnRecord, bounded: Callable[[float], float]
    ) -> AsyncIterator[pb.GenerateResponse]:
        """The remote's answer as deltas, then one completion; `bounded(limit)` is `limit` cut to the
        caller's deadline."""
        breaker = self.breaker(request.agent_id)
        if not breaker.try_acquire():
            retry_at = datetime.fromtimestamp(breaker.next_attempt_at(), UTC).isoformat(timespec="seconds")
            raise Unavailable(
                f"remote agent {request.model} has an open circuit breaker; the next trial is at {retry_at}"
            )
        call = _Call(request)
        card_url = ""
        try:
            async with asyncio.timeout(bounded(self._timeout)):
                agent, sealed = await self._credentials.remote(request.agent_id)
                call.who = f"remote agent {agent.name}"
                headers = await self._credentials.headers(agent, sealed)
                card_url = agent.remote.card_url
                card = await self._cards.card(card_url, bounded(self._timeout))
                call.client = self._factory.create(card)
                call.context = ClientCallContext(
                    timeout=bounded(self._timeout),
                    service_parameters=ServiceParametersFactory.create_from(
                        headers, [with_a2a_extensions([USAGE_EXTENSION_URI])]
                    ),
                )
                async for text in call.texts(record):
                    yield pb.GenerateResponse(text_delta=pb.TextDelta(text=text, index=call.deltas))
                    call.deltas += 1
            breaker.record_success()
        except REMOTE_FAILURES as exc:
            breaker.record_failure()
            if isinstance(exc, A2AClientError):
                self._cards.forget(card_url)  # it may have moved: the next call reads its card again
            message = _message(exc, call.who)
            if not call.deltas:
                raise Unavailable(message) from None
            log.warning(
                "a remote agent failed mid-answer", extra={"agent_id": request.agent_id, "error": message}
            )
            record.finish_reason = pb.FINISH_REASON_ERROR
        except BaseException:
            breaker.release()
            try:
                await call.cancel()
            finally:
                await call.close()
            raise
        if record.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
            record.finish_reason = pb.FINISH_REASON_STOP
        try:
            usage = await call.usage()
        finally:
            await call.close()
        if usage is not None:
            record.input_tokens, record.output_tokens = usage.input_tokens, usage.output_tokens
        completion = pb.GenerateCompletion(
            finish_reason=record.finish_reason, usage=record.dimensions(), provider_request_id=call.task_id
        )
        yield pb.GenerateResponse(completion=completion)


def _message(exc: BaseException, who: str) -> str:
    if isinstance(exc, CredentialFailure | CardFailure | RemoteFailure):
        return exc.message
    if isinstance(exc, TimeoutError):
        return f"{who} did not answer in time"
    return f"{who} failed: {type(exc).__name__}: {exc}"


class _Call:
    """One SendStreamingMessage: the task it started, what it said of its usage, and its client."""

    def __init__(self, request: pb.GenerateRequest) -> None:
        self.request = request
        self.who = f"remote agent {request.model}"
        self.client: Client | None = None
        self.context: ClientCallContext | None = None
        self.task_id = ""
        self.state: int = a2a.TASK_STATE_UNSPECIFIED
        self.metadata: dict[str, object] = {}
        self.deltas = 0

    async def texts(self, record: TurnRecord) -> AsyncIterator[str]:
        assert self.client is not None
        stream = self.client.send_message(
            a2a.SendMessageRequest(message=outgoing_message(self.request)), context=self.context
        )
        async for event in stream:
            record.reached_provider = True
            text = self._read(event)
            if self.state in FAILED:
                raise RemoteFailure(f"{self.who} ended its task {a2a.TaskState.Name(self.state)}")
            if text:
                record.output_characters += len(text)
                yield text
            if self.state in TERMINAL:
                return

    def _read(self, event: a2a.StreamResponse) -> str:
        """Note what `event` says of the task; the text it carries for the user, if any."""
        kind = event.WhichOneof("payload")
        if kind == "task":
            self.task_id, self.state = event.task.id, event.task.status.state
            self._note(event.task.metadata)
            return ""
        if kind == "artifact_update":
            self.task_id = self.task_id or event.artifact_update.task_id
            self._note(event.artifact_update.metadata)
            return _texts(list(event.artifact_update.artifact.parts))
        if kind == "status_update":
            update = event.status_update
            self.task_id, self.state = self.task_id or update.task_id, update.status.state
            self._note(update.metadata)
            message = update.status.message
            return _texts(list(message.parts)) if message.role == a2a.ROLE_AGENT else ""
        if kind == "message":
            self.state = a2a.TASK_STATE_COMPLETED  # a plain message is the whole answer
            return _texts(list(event.message.parts))
        return ""

    def _note(self, metadata: struct_pb2.Struct) -> None:
        if len(metadata.fields):
            self.metadata.update(json_format.MessageToDict(metadata))

    async def usage(self) -> ReportedUsage | None:
        """The usage the remote reported: in what the stream carried, else in its task's final
        metadata (one GetTask, the task being over); None when it reports none."""
        found = reported_usage(self.metadata)
        if found is not None or not self.task_id or self.client is None:
            return found
        try:
            task = await asyncio.wait_for(
                self.client.get_task(a2a.GetTaskRequest(id=self.task_id), context=self.context),
                CANCEL_SECONDS,
            )
        except (A2AError, TimeoutError, httpx.HTTPError):
            return None
        self._note(task.metadata)
        return reported_usage(self.metadata)

    async def cancel(self) -> None:
        """CancelTask for a task still running: the caller is gone, the remote should stop too."""
        if not self.task_id or self.state in TERMINAL or self.client is None:
            return
        request = a2a.CancelTaskRequest(id=self.task_id)
        try:
            await asyncio.wait_for(self.client.cancel_task(request, context=self.context), CANCEL_SECONDS)
        except (A2AError, TimeoutError, httpx.HTTPError) as exc:
            log.warning(
                "a remote task could not be cancelled", extra={"task_id": self.task_id, "error": str(exc)}
            )

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()
