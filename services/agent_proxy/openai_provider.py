"""OpenAI Chat Completions, streamed with `stream_options.include_usage`, through the official
`openai` SDK; any OpenAI-compatible server (Ollama, vLLM, llama.cpp) by its base URL."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import openai
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from openai.types.chat import ChatCompletionMessageParam

from services.agent_proxy.provider import Finished, ProviderEvent, ProviderFailure, Started, Turn, as_failure
from services.agent_proxy.settings import ProviderConfig

FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_MAX_TOKENS,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
}


class OpenAIProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._client = openai.AsyncOpenAI(
            # Compatible servers often want no key; the SDK insists on one, so send a placeholder.
            api_key=config.api_key.reveal() if config.api_key else "none",
            base_url=config.base_url,
            max_retries=0,
        )

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, model: str, turn: Turn, read_timeout: float) -> AsyncGenerator[ProviderEvent]:
        messages: list[ChatCompletionMessageParam] = []
        if turn.system:
            messages.append({"role": "system", "content": turn.system})
        for role, text in turn.messages:
            if role == "assistant":
                messages.append({"role": "assistant", "content": text})
            else:
                messages.append({"role": "user", "content": text})
        try:
            stream = await self._client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=turn.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                temperature=turn.temperature if turn.temperature is not None else openai.omit,
                timeout=read_timeout,
            )
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        request_id = stream.response.headers.get("x-request-id", "")
        yield Started(request_id=request_id, input_tokens=None)
        finish_reason: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        try:
            async for chunk in stream:
                if chunk.choices:
                    choice = chunk.choices[0]
                    if choice.delta.content:
                        yield choice.delta.content
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                if chunk.usage is not None:
                    input_tokens = chunk.usage.prompt_tokens
                    output_tokens = chunk.usage.completion_tokens
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        finally:
            await stream.close()
        if finish_reason is None:
            raise ProviderFailure(
                f"{self.config.name} ended the stream without a finish reason", retryable=True
            )
        yield Finished(
            finish_reason=FINISH_REASONS.get(finish_reason, pb.FINISH_REASON_STOP),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            request_id=request_id,
        )
