"""Anthropic Messages API, streamed, through the official `anthropic` SDK."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import anthropic
from anthropic.types import (
    MessageParam,
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

from services.agent_proxy.provider import Finished, ProviderEvent, ProviderFailure, Started, Turn, as_failure
from services.agent_proxy.settings import ProviderConfig

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
            stream = await self._client.messages.create(
                model=model,
                max_tokens=turn.max_tokens,
                messages=[_message(role, text) for role, text in turn.messages],
                stream=True,
                system=turn.system or anthropic.omit,
                # This SDK's typed parameters leave temperature out; the API still takes it.
                extra_body={"temperature": turn.temperature} if turn.temperature is not None else None,
                timeout=read_timeout,
            )
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        request_id = stream.response.headers.get("request-id", "")
        input_tokens: int | None = None
        output_tokens: int | None = None
        stop_reason: str | None = None
        stopped = False
        try:
            async for event in stream:
                if isinstance(event, RawContentBlockDeltaEvent):
                    if event.delta.type == "text_delta" and event.delta.text:
                        yield event.delta.text
                elif isinstance(event, RawMessageStartEvent):
                    input_tokens = event.message.usage.input_tokens
                    yield Started(request_id=request_id, input_tokens=input_tokens)
                elif isinstance(event, RawMessageDeltaEvent):
                    output_tokens = event.usage.output_tokens
                    stop_reason = event.delta.stop_reason
                elif isinstance(event, RawMessageStopEvent):
                    stopped = True
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        finally:
            await stream.close()
        if not stopped:
            raise ProviderFailure(f"{self.config.name} ended the stream before message_stop", retryable=True)
        yield Finished(
            finish_reason=STOP_REASONS.get(stop_reason or "", pb.FINISH_REASON_STOP),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            request_id=request_id,
        )


def _message(role: str, text: str) -> MessageParam:
    if role == "assistant":
        return {"role": "assistant", "content": text}
    return {"role": "user", "content": text}
