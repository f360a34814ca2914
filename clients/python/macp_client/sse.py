"""Server-sent events from the edge: a message's round (`POST /v1/conversations/{id}/messages` with
`Accept: text/event-stream`) and a conversation's events (`GET /v1/conversations/{id}/events`).

Each SSE event is `id:` its log id, `event:` its kind and `data:` the ConversationEvent; a failure
is `event: error` with data `{code, message}` and the end of the stream. A stream that breaks (the
connection drops, or the orchestrator ends it with UNAVAILABLE) is followed again after the last
event received (`Last-Event-ID`), and a `Cursor` drops whatever the new stream repeats: the
caller sees every event once, in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import httpx

from macp_client.errors import MacpConnectionError, MacpError, error_of_frame
from macp_client.events import Cursor, Event, parse_event

EVENT_STREAM = "text/event-stream"
RESUMES = 5
RESUME_BASE_SECONDS = 0.1


@dataclass(frozen=True)
class SseMessage:
    event: str
    data: str
    id: str | None


class SseParser:
    """The event stream format of the HTML standard, line by line (no retry field: unused here)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SseMessage | None:
        """Take one line (without its end); the message a blank line completes, if any."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            message = SseMessage(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None  # a comment: the edge's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


async def read_events(response: httpx.Response) -> AsyncIterator[Event]:
    """The events of one SSE answer; its `error` event is raised as a `MacpError`."""
    parser = SseParser()
    async for line in response.aiter_lines():
        message = parser.feed(line)
        if message is None:
            continue
        document = json.loads(message.data)
        if message.event == "error":
            raise error_of_frame(document if isinstance(document, dict) else {})
        if isinstance(document, dict):
            yield parse_event(document)


# Opens the stream of the events after an event id (None: from the start the route chooses).
Opener = Callable[[str | None], AbstractAsyncContextManager[httpx.Response]]


async def follow(
    open_after: Opener,
    cursor: Cursor,
    stop: Callable[[Event], bool] | None = None,
    resume: Opener | None = None,
) -> AsyncIterator[Event]:
    """Every event of the streams `open_after` opens, once each, until `stop` accepts one (or for
    as long as the caller iterates). A broken stream is opened again after the cursor's event, by
    `resume` when given (a POST is not repeated: its round is followed by GET), else `open_after`."""
    opener = open_after
    breaks = 0
    while True:
        try:
            async with opener(cursor.last_event_id) as response:
                async for event in read_events(response):
                    if not cursor.admit(event):
                        continue
                    breaks = 0
                    yield event
                    if stop is not None and stop(event):
                        return
        except (MacpConnectionError, httpx.TransportError) as error:
            failure: MacpError = error if isinstance(error, MacpError) else MacpConnectionError(repr(error))
        except MacpError as error:
            if error.code != "UNAVAILABLE":
                raise
            failure = error
        else:
            failure = MacpConnectionError("the event stream ended before its last event")
        breaks += 1
        if breaks > RESUMES or cursor.last_event_id is None:
            raise failure
        await asyncio.sleep(RESUME_BASE_SECONDS * 2 ** (breaks - 1))
        opener = resume or open_after
