"""OpenAI Chat Completions, streamed with `stream_options.include_usage`, through the official
`openai` SDK (its chunks read in sse_events.py); any OpenAI-compatible server (Ollama, vLLM,
llama.cpp) by its base URL."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import openai
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from openai.types.chat import ChatCompletionMessageParam

from services.agent_proxy.provider import Finished, ProviderEvent, ProviderFailure, Started, Turn, as_failure
from services.agent_proxy.settings import ProviderConfig
from services.agent_proxy.sse_events import payloads

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
            # The SDK makes the call; its stream's chunks are read in sse_events.py.
            opened = self._client.chat.completions.with_streaming_response.create(
                model=model,
                messages=messages,
                max_tokens=turn.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                temperature=turn.temperature if turn.temperature is not None else openai.omit,
                timeout=read_timeout,
            )
            response = await opened.__aenter__()
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        request_id = response.headers.get("x-request-id", "")
        yield Started(request_id=request_id, input_tokens=None)
        finish_reason: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        try:
            async for chunk in payloads(response.iter_lines()):
                if "error" in chunk:
                    raise _stream_error(self.config.name, chunk["error"])
                choices = chunk.get("choices") or ()
                if choices:
                    choice = choices[0]
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield str(content)
                    if choice.get("finish_reason"):
                        finish_reason = str(choice["finish_reason"])
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    input_tokens = usage.get("prompt_tokens")
                    output_tokens = usage.get("completion_tokens")
        except ProviderFailure:
            raise
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        finally:
            await opened.__aexit__(None, None, None)
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


def _stream_error(who: str, error: object) -> ProviderFailure:
    """An error chunk mid-stream (what the SDK would raise as APIError): worth another try, as
    compatible servers send them for overload and internal failures alike."""
    message = str(error.get("message", ""))[:300] if isinstance(error, dict) else str(error)[:300]
    return ProviderFailure(f"{who} sent an error mid-answer: {message}", retryable=True)
