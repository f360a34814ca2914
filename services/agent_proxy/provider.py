"""What every provider adapter yields and raises, whichever SDK it rides on.

An adapter's `stream()` is an async generator: `Started` once the provider accepted the call, `str`
pieces of text and whole `ToolCall`s (each once its arguments are complete) as they arrive, then
exactly one `Finished`. Closing the generator early (a cancelled Generate) closes the upstream HTTP
response, so no socket or task outlives the call. Every failure is a `ProviderFailure` whose message
is safe to show: it never holds a key.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anthropic
import httpx
import httpx2
import openai
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

from services.agent_proxy.settings import ProviderConfig

# HTTP statuses worth another try: timeouts, conflicts, rate limits, the provider's own failures.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call; `input_schema` is a JSON Schema of type object."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A call the model made (in the history, or just now in its answer)."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """The result of one of the model's calls, sent back to it."""

    tool_call_id: str
    text: str
    is_error: bool


@dataclass(frozen=True)
class TurnMessage:
    """One message of a provider prompt. An assistant message may carry the model's tool calls; the
    user message after it carries their results, which both protocols put before its text."""

    role: Literal["user", "assistant"]
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


@dataclass(frozen=True)
class ToolChoice:
    """Whether and which of the offered tools the model must call (GenerateRequest.tool_choice)."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str = ""  # the tool, for "tool"
    parallel: bool = True  # several calls at once allowed


@dataclass(frozen=True)
class Turn:
    """What one provider call sends, already in the provider-neutral shape adapters translate."""

    system: str
    messages: tuple[TurnMessage, ...]  # merged, alternating, a user message first
    max_tokens: int
    temperature: float | None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None  # None: the provider's default (auto, parallel calls)


@dataclass(frozen=True)
class Started:
    """The provider accepted the call; Anthropic reports the prompt's tokens at this point."""

    request_id: str
    input_tokens: int | None


@dataclass(frozen=True)
class Finished:
    finish_reason: pb.FinishReason.ValueType
    input_tokens: int | None
    output_tokens: int | None
    request_id: str


ProviderEvent = Started | str | ToolCall | Finished


class ProviderFailure(Exception):
    """The provider did not answer well. `retryable`: worth another attempt (and a breaker failure);
    otherwise the request itself was refused (a 400), which says nothing about the provider's health."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class Provider(Protocol):
    config: ProviderConfig

    def stream(self, model: str, turn: Turn, read_timeout: float) -> AsyncGenerator[ProviderEvent]:
        """The provider's answer; `read_timeout` bounds the wait for each byte (the first included)."""
        ...

    async def close(self) -> None: ...


def redacted(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def failure_of(exc: Exception, config: ProviderConfig) -> ProviderFailure | None:
    """The ProviderFailure an SDK or transport exception means, or None for one that is ours (a bug)."""
    keys = [config.api_key.reveal()] if config.api_key is not None else []
    who = config.name
    if isinstance(exc, anthropic.APIStatusError | openai.APIStatusError):
        status = exc.status_code
        detail = redacted(_error_message(exc), keys)
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return ProviderFailure(f"{who} answered HTTP {status}: {detail}", retryable=retryable)
    if isinstance(exc, anthropic.APITimeoutError | openai.APITimeoutError | httpx.TimeoutException):
        return ProviderFailure(f"{who} did not answer in time", retryable=True)
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderFailure(f"{who} did not answer in time", retryable=True)
    if isinstance(
        exc,
        anthropic.APIConnectionError
        | openai.APIConnectionError
        | httpx.TransportError
        | httpx2.TransportError,
    ):
        return ProviderFailure(f"{who} connection failed or dropped mid-answer", retryable=True)
    if isinstance(exc, ValueError):  # a chunk that is not JSON (json.JSONDecodeError is a ValueError)
        return ProviderFailure(f"{who} sent a malformed stream chunk", retryable=True)
    return None


def as_failure(exc: Exception, config: ProviderConfig) -> Exception:
    """`exc` as a ProviderFailure when it is the provider's doing; unchanged when it is ours."""
    failure = failure_of(exc, config)
    return failure if failure is not None else exc


def _error_message(exc: anthropic.APIStatusError | openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
    return type(exc).__name__
