"""OpenAI Chat Completions, streamed with `stream_options.include_usage`, through the official
`openai` SDK (its chunks read in sse_events.py); any OpenAI-compatible server (Ollama, vLLM,
llama.cpp) by its base URL.

Tools go as `tools` of type function; the model's calls in the history as the `tool_calls` of its
message, each result as a `role: tool` message right after it (OpenAI has no error flag: a failed
call's text is marked `Error:`). A call in the answer streams as `delta.tool_calls` entries by
index, its arguments in pieces; calls stream one after another, so one is whole when the next
index starts or the finish reason comes, and is yielded then.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import openai
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolParam,
)

from services.agent_proxy.provider import (
    Finished,
    ProviderEvent,
    ProviderFailure,
    Started,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Turn,
    TurnMessage,
    as_failure,
)
from services.agent_proxy.settings import ProviderConfig
from services.agent_proxy.sse_events import payloads

FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_MAX_TOKENS,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "tool_calls": pb.FINISH_REASON_TOOL_USE,
    "function_call": pb.FINISH_REASON_TOOL_USE,
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
        for message in turn.messages:
            messages.extend(_messages(message))
        try:
            # The SDK makes the call; its stream's chunks are read in sse_events.py.
            opened = self._client.chat.completions.with_streaming_response.create(
                model=model,
                messages=messages,
                max_tokens=turn.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                tools=[_tool(tool) for tool in turn.tools] if turn.tools else openai.omit,
                tool_choice=_tool_choice(turn.tool_choice) if turn.tool_choice else openai.omit,
                parallel_tool_calls=False
                if turn.tool_choice and not turn.tool_choice.parallel
                else openai.omit,
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
        calls = _CallsInProgress(self.config.name)
        try:
            async for chunk in payloads(response.iter_lines()):
                if "error" in chunk:
                    raise _stream_error(self.config.name, chunk["error"])
                choices = chunk.get("choices") or ()
                if choices:
                    choice = choices[0]
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    if content:
                        yield str(content)
                    for entry in delta.get("tool_calls") or ():
                        for call in calls.add(entry):
                            yield call
                    if choice.get("finish_reason"):
                        finish_reason = str(choice["finish_reason"])
                        for call in calls.finish():
                            yield call
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


class _CallsInProgress:
    """The streamed tool calls by index; a call is whole once a later one starts, or at the end."""

    def __init__(self, who: str) -> None:
        self._who = who
        self._open: dict[int, dict[str, Any]] = {}
        self._done: set[int] = set()

    def add(self, entry: dict[str, Any]) -> Iterator[ToolCall]:
        index = entry.get("index", 0)
        if index in self._done:
            raise ProviderFailure(
                f"{self._who} went back to tool call {index} after it ended", retryable=True
            )
        if index not in self._open:
            yield from self._close(lambda earlier: earlier < index)
            self._open[index] = {"id": "", "name": "", "arguments": []}
        call = self._open[index]
        function = entry.get("function") or {}
        call["id"] = entry.get("id") or call["id"]
        call["name"] = function.get("name") or call["name"]
        call["arguments"].append(function.get("arguments") or "")

    def finish(self) -> Iterator[ToolCall]:
        return self._close(lambda index: True)

    def _close(self, which: Callable[[int], bool]) -> Iterator[ToolCall]:
        for index in sorted(i for i in self._open if which(i)):
            call = self._open.pop(index)
            self._done.add(index)
            text = "".join(call["arguments"])
            try:
                arguments = json.loads(text) if text.strip() else {}
            except json.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict) or not call["id"] or not call["name"]:
                raise ProviderFailure(
                    f"{self._who} sent tool call {index} without an id, a name or a JSON object of arguments",
                    retryable=True,
                )
            yield ToolCall(id=call["id"], name=call["name"], arguments=arguments)


def _tool_choice(choice: ToolChoice) -> ChatCompletionToolChoiceOptionParam:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def _tool(tool: ToolSpec) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.input_schema},
    }


def _messages(message: TurnMessage) -> list[ChatCompletionMessageParam]:
    if message.role == "assistant":
        if not message.tool_calls:
            return [{"role": "assistant", "content": message.text}]
        return [
            {
                "role": "assistant",
                "content": message.text or None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                    }
                    for call in message.tool_calls
                ],
            }
        ]
    # The results come right after the calls (OpenAI requires it), then the message's own text.
    messages: list[ChatCompletionMessageParam] = [
        {
            "role": "tool",
            "tool_call_id": result.tool_call_id,
            "content": f"Error: {result.text}" if result.is_error else result.text,
        }
        for result in message.tool_results
    ]
    if message.text or not message.tool_results:
        messages.append({"role": "user", "content": message.text})
    return messages


def _stream_error(who: str, error: object) -> ProviderFailure:
    """An error chunk mid-stream (what the SDK would raise as APIError): worth another try, as
    compatible servers send them for overload and internal failures alike."""
    message = str(error.get("message", ""))[:300] if isinstance(error, dict) else str(error)[:300]
    return ProviderFailure(f"{who} sent an error mid-answer: {message}", retryable=True)
