"""One subscribed conversation of a WebSocket connection: its OrchestratorService.Converse stream.

The stream is opened with the caller's token exchanged for the orchestrator's audience, written to
with `call.write` (no request-iterator task) and read by one task that turns every event into a
frame and hands it to the connection without waiting: the connection's bounded queue decides what
happens to a client that reads too slowly, so the orchestrator's stream is never held up by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TypeAlias

import grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.edge.context import EdgeContext
from services.edge.ws.frames import error_frame, event_frame, rpc_error_fields

log = logging.getLogger("macp.edge.websocket")

# (frame text) -> None: the connection's non-blocking push.
Push = Callable[[str], None]
# (subscription) -> None: told when a stream ended on its own.
Ended = Callable[["Subscription"], None]
ConverseCall: TypeAlias = "grpc.aio.StreamStreamCall[pb.ConverseRequest, pb.ConverseResponse]"


class Subscription:
    """A live Converse stream for one conversation."""

    __slots__ = ("_call", "_cancelled", "_ended", "_push", "_reader", "conversation_id")

    def __init__(self, conversation_id: str, call: ConverseCall, push: Push, ended: Ended) -> None:
        self.conversation_id = conversation_id
        self._call = call
        self._push = push
        self._ended = ended
        self._cancelled = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(
        cls, edge: EdgeContext, first: pb.ConverseRequest, push: Push, ended: Ended
    ) -> Subscription:
        """Opens the stream and sends `first` (a Join, or the action that opened it)."""
        # No deadline: the stream lives as long as the subscription. wait_for_ready off, so an
        # unreachable mesh fails the write below at once instead of holding the connection.
        call = edge.orchestrator.Converse(wait_for_ready=False)
        subscription = cls(first.conversation_id, call, push, ended)
        await subscription.write(first, edge.timeout)
        return subscription

    async def write(self, request: pb.ConverseRequest, within: float) -> None:
        """Sends one client event; a stream that already failed is reported by the reader."""
        try:
            async with asyncio.timeout(within):
                await self._call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            # The stream is over: its reader reports why (with the status) and ends the subscription.
            pass

    def cancel(self) -> None:
        """Ends the stream on the client's side (unsubscribe, connection closing); no frame follows."""
        self._cancelled = True
        self._call.cancel()
        self._reader.cancel()

    async def _read(self) -> None:
        code, message = "UNAVAILABLE", "the orchestrator ended the conversation's stream"
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                assert isinstance(response, pb.ConverseResponse)
                self._push(event_frame(response.event))
        except grpc.aio.AioRpcError as exc:
            if self._cancelled:
                return
            code, message = rpc_error_fields(exc)
        except asyncio.CancelledError:
            return
        except Exception:  # a bug of ours must not leave the subscription silently dead
            log.exception("reading a Converse stream failed", extra={"conversation_id": self.conversation_id})
            code, message = "INTERNAL", "the edge failed reading the conversation's stream"
        if self._cancelled:
            return
        self._ended(self)
        with contextlib.suppress(Exception):
            self._push(
                error_frame(
                    code,
                    f"conversation {self.conversation_id}: {message}; subscribe again "
                    "(with last_event_id to resume)",
                    action="subscribe",
                    conversation_id=self.conversation_id,
                    subscribed=False,
                )
            )
