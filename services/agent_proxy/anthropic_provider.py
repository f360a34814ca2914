"""Anthropic Messages API, streamed, through the official `anthropic` SDK (its events read here).

Tools go as `tools` (name, description, input_schema); the model's calls in the history as
`tool_use` blocks of its message, their results as `tool_result` blocks leading the next user
message. A call in the answer is a `tool_use` content block whose input arrives as pieces of JSON
(input_json_delta); it is yielded whole at its content_block_stop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import anthropic
from anthropic.types import ContentBlockParam, MessageParam, ToolChoiceParam, ToolParam, ToolResultBlockParam
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

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

STOP_REASONS = {
    "end_turn": pb.FINISH_REASON_STOP,
    "stop_sequence": pb.FINISH_REASON_STOP,
    "max_tokens": pb.FINISH_REASON_MAX_TOKENS,
    "refusal": pb.FINISH_REASON_CONTENT_FILTER,
    "tool_use": pb.FINISH_REASON_TOOL_USE,
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
                messages=[_message(message) for message in turn.messages],
                tools=[_tool(tool) for tool in turn.tools] if turn.tools else anthropic.omit,
                tool_choice=_tool_choice(turn.tool_choice) if turn.tool_choice else anthropic.omit,
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
        calls = _CallsInProgress(self.config.name)
        try:
            async for event in payloads(response.iter_lines()):
                kind = event.get("type")
                if kind == "content_block_delta":
                    delta = event["delta"]
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield str(delta["text"])
                    elif delta.get("type") == "input_json_delta":
                        calls.add_json(event["index"], str(delta.get("partial_json", "")))
                elif kind == "content_block_start":
                    calls.start(event["index"], event["content_block"])
                elif kind == "content_block_stop":
                    call = calls.stop(event["index"])
                    if call is not None:
                        yield call
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


class _CallsInProgress:
    """The tool_use blocks being streamed, by content block index, until each one's stop."""

    def __init__(self, who: str) -> None:
        self._who = who
        self._open: dict[int, tuple[str, str, list[str]]] = {}  # index -> (id, name, JSON pieces)

    def start(self, index: int, block: dict[str, Any]) -> None:
        if block.get("type") == "tool_use":
            # Anthropic starts the block with input {} and streams the input; a server that sends
            # the whole input here and no deltas is read the same way.
            given = block.get("input")
            opening = json.dumps(given) if isinstance(given, dict) and given else ""
            self._open[index] = (str(block["id"]), str(block["name"]), [opening] if opening else [])

    def add_json(self, index: int, piece: str) -> None:
        if index in self._open:
            self._open[index][2].append(piece)

    def stop(self, index: int) -> ToolCall | None:
        if index not in self._open:
            return None
        call_id, name, pieces = self._open.pop(index)
        text = "".join(pieces)
        try:
            arguments = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise ProviderFailure(
                f"{self._who} sent tool call input that is not a JSON object", retryable=True
            )
        return ToolCall(id=call_id, name=name, arguments=arguments)


def _tool_choice(choice: ToolChoice) -> ToolChoiceParam:
    """Anthropic's names: "required" is "any"; parallel calls are turned off inside the choice."""
    if choice.mode == "none":
        return {"type": "none"}
    single = not choice.parallel
    if choice.mode == "tool":
        return {"type": "tool", "name": choice.name, "disable_parallel_tool_use": single}
    if choice.mode == "required":
        return {"type": "any", "disable_parallel_tool_use": single}
    return {"type": "auto", "disable_parallel_tool_use": single}


def _tool(tool: ToolSpec) -> ToolParam:
    return {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}


def _message(message: TurnMessage) -> MessageParam:
    if message.role == "assistant":
        if not message.tool_calls:
            return {"role": "assistant", "content": message.text}
        blocks: list[ContentBlockParam] = [{"type": "text", "text": message.text}] if message.text else []
        blocks.extend(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
            for call in message.tool_calls
        )
        return {"role": "assistant", "content": blocks}
    if not message.tool_results:
        return {"role": "user", "content": message.text}
    # The results lead the message (Anthropic requires tool_result blocks before any text).
    content: list[ContentBlockParam] = []
    for result in message.tool_results:
        block: ToolResultBlockParam = {"type": "tool_result", "tool_use_id": result.tool_call_id}
        if result.text:
            block["content"] = result.text
        if result.is_error:
            block["is_error"] = True
        content.append(block)
    if message.text:
        content.append({"type": "text", "text": message.text})
    return {"role": "user", "content": content}
