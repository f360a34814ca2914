"""Anthropic Messages API, streamed, through the official `anthropic` SDK (its events read here)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anthropic
from anthropic.types import MessageParam
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

from services.agent_proxy.provider import Finished, ProviderEvent, ProviderFailure, Started, Turn, as_failure
from services.agent_proxy.settings import ProviderConfig
from services.agent_proxy.sse_events import payloads

STOP_REASONS = {
    "end_turn": pb.FINISH_REASON_STOP,
    "stop_sequence": pb.FINISH_REASON_STOP,
    "max_tokens": pb.FINISH_REASON_MAX_TOKENS,
    "refusal": pb.FINISH_REASON_CONTENT_FILTER,
}


class AnthropicProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        # Retries are ours (only before the first token, counted by the breaker): the SDK's are off.
        self._client = anthropic.AsyncAnthropic(
            api_key=config.api_key.reveal() if config.api_key else None,
            base_url=config.base_url,
            max_retries=0,
        )

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, model: str, turn: Turn, read_timeout: float) -> AsyncGenerator[ProviderEvent]:
        try:
            # The SDK makes the call; its stream's events are read in sse_events.py.
            opened = self._client.messages.with_streaming_response.create(
                model=model,
                max_tokens=turn.max_tokens,
                messages=[_message(role, text) for role, text in turn.messages],
                stream=True,
                system=turn.system or anthropic.omit,
                # This SDK's typed parameters leave temperature out; the API still takes it.
                extra_body={"temperature": turn.temperature} if turn.temperature is not None else None,
                timeout=read_timeout,
            )
            response = await opened.__aenter__()
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        request_id = response.headers.get("request-id", "")
        input_tokens: int | None = None
        output_tokens: int | None = None
        stop_reason: str | None = None
        stopped = False
        try:
            async for event in payloads(response.iter_lines()):
                kind = event.get("type")
                if kind == "content_block_delta":
                    delta = event["delta"]
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield str(delta["text"])
                elif kind == "message_start":
                    input_tokens = event["message"]["usage"]["input_tokens"]
                    yield Started(request_id=request_id, input_tokens=input_tokens)
                elif kind == "message_delta":
                    output_tokens = event.get("usage", {}).get("output_tokens")
                    stop_reason = event.get("delta", {}).get("stop_reason")
                elif kind == "message_stop":
                    stopped = True
                elif kind == "error":
                    raise _stream_error(self.config.name, event)
        except ProviderFailure:
            raise
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        finally:
            await opened.__aexit__(None, None, None)
        if not stopped:
            raise ProviderFailure(f"{self.config.name} ended the stream before message_stop", retryable=True)
        yield Finished(
            finish_reason=STOP_REASONS.get(stop_reason or "", pb.FINISH_REASON_STOP),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            request_id=request_id,
        )


def _stream_error(who: str, event: dict[str, Any]) -> ProviderFailure:
    """An `error` event mid-stream: overloaded or internal errors are worth another try."""
    error = event.get("error")
    kind = str(error.get("type", "error")) if isinstance(error, dict) else "error"
    message = str(error.get("message", ""))[:300] if isinstance(error, dict) else ""
    retryable = kind in ("overloaded_error", "api_error")
    return ProviderFailure(f"{who} sent an error mid-answer: {kind}: {message}", retryable=retryable)


def _message(role: str, text: str) -> MessageParam:
    if role == "assistant":
        return {"role": "assistant", "content": text}
    return {"role": "user", "content": text}
