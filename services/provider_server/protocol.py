"""What both wire protocols share: reading the request body, server-sent events, and streaming an
answer under a test's behavior (pace, cut, malformed chunk)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.provider_server.behavior import BEHAVIOR_HEADER, Behavior, BehaviorBook, BehaviorError

# With no pace, deltas are written in batches of this many events: the bytes on the wire are the
# same SSE stream, and the server stays cheap enough not to be what a benchmark measures.
EVENTS_PER_WRITE = 32


class ProtocolError(Exception):
    """A request the server refuses; each protocol renders it in its own error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


PROMPTS_KEPT = 100


@dataclass
class ProviderState:
    """What the server remembers between requests: booked behaviors and what it has served."""

    book: BehaviorBook = field(default_factory=BehaviorBook)
    requests: dict[str, int] = field(default_factory=dict)
    open_streams: int = 0
    streams_started: int = 0
    # The newest prompts answered (system prompt and messages joined), oldest first: tests of the
    # orchestrator check what each agent was shown.
    prompts: deque[str] = field(default_factory=lambda: deque(maxlen=PROMPTS_KEPT))

    def remember(self, prompt: list[str]) -> None:
        self.prompts.append("\n".join(prompt))

    def behavior_for(self, request: Request, model: str) -> Behavior:
        """The request's own `x-macp-behavior`, else the first one booked for `model`; counts the
        request either way (tests check how often the agent proxy really called)."""
        self.requests[model] = self.requests.get(model, 0) + 1
        spec = request.headers.get(BEHAVIOR_HEADER)
        if spec is not None:
            try:
                return Behavior.parse(spec)
            except BehaviorError as exc:
                raise ProtocolError(400, str(exc)) from None
        return self.book.take(model)


async def read_json(request: Request) -> Mapping[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(400, f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(400, "the request body must be a JSON object")
    return body


def require(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        raise ProtocolError(400, f"{name}: Field required")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(400, f"{name}: expected {what}")
    return value


def optional_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProtocolError(400, f"{name}: expected a positive integer")
    return value


def content_text(content: Any, where: str) -> str:
    """A message's text: a string, or a list of content blocks whose text blocks are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for block in content:
            if not isinstance(block, dict) or not isinstance(block.get("text", ""), str):
                raise ProtocolError(400, f"{where}: expected content blocks with a text field")
            if block.get("type") == "text":
                texts.append(block["text"])
        return "\n".join(texts)
    raise ProtocolError(400, f"{where}: expected a string or a list of content blocks")


def sse(data: Mapping[str, Any], event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


CUT = object()  # marks where a `cut` behavior drops the connection
Chunk = bytes | object
Piece = TypeVar("Piece")


async def answer_stream(
    head: Iterable[bytes],
    pieces: Iterable[Piece],
    encode_delta: Callable[[Piece], bytes],
    tail: Iterable[bytes],
    malformed: bytes,
    behavior: Behavior,
) -> AsyncIterator[Chunk]:
    """The body of a streamed answer: `head` events, one delta event per piece, `tail` events, with
    the behavior's pace between deltas, its malformed chunk and its cut where it asks. A piece is a
    text token, or a tool call's argument piece with the events that open or close its call."""
    yield b"".join(head)
    batch: list[bytes] = []
    sent = 0
    for piece in pieces:
        if behavior.malformed == sent:
            batch.append(malformed)
        if behavior.cut == sent:
            yield b"".join(batch)
            yield CUT
            return
        if behavior.pace and sent:
            if batch:
                yield b"".join(batch)
                batch = []
            await asyncio.sleep(behavior.pace)
        batch.append(encode_delta(piece))
        sent += 1
        # The first delta goes out at once (time to first token); later ones in batches.
        if sent == 1 or behavior.pace or len(batch) >= EVENTS_PER_WRITE:
            yield b"".join(batch)
            batch = []
    if behavior.malformed is not None and behavior.malformed >= sent:
        batch.append(malformed)
    if behavior.cut is not None:
        yield b"".join(batch)
        yield CUT
        return
    batch.extend(tail)
    yield b"".join(batch)


def as_is(events: bytes) -> bytes:
    """The encoding of pieces that are already their events (a tool call's argument pieces)."""
    return events


class SseResponse(Response):
    """A server-sent-event stream that stops when the client goes away, and that can end without
    completing the HTTP response (a `cut`: the client sees the connection drop mid-stream)."""

    media_type = "text/event-stream"

    def __init__(
        self, chunks: AsyncIterator[Chunk], state: ProviderState, headers: Mapping[str, str]
    ) -> None:
        self.chunks = chunks
        self.state = state
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", **headers})

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.chunks:
            if chunk is CUT:
                return
            assert isinstance(chunk, bytes)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _until_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.state.open_streams += 1
        self.state.streams_started += 1
        stream = asyncio.ensure_future(self._stream(send))
        listener = asyncio.ensure_future(self._until_disconnect(receive))
        try:
            await asyncio.wait({stream, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, listener):
                task.cancel()
            await asyncio.gather(stream, listener, return_exceptions=True)
            self.state.open_streams -= 1
        if stream.done() and not stream.cancelled() and stream.exception() is not None:
            raise stream.exception()  # type: ignore[misc]
