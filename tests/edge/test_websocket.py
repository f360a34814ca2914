"""The WebSocket API (`/v1/ws`) over real sockets: the edge served by uvicorn and its own WebSocket
protocol, the `websockets` client, the fake orchestrator behind it and the session's real Redis for
revocations and limits."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsproto import ConnectionType, WSConnection
from wsproto.events import CloseConnection
from wsproto.events import Request as WsRequest

from services.stack.infra import Infrastructure
from tests.edge.fake_orchestrator import AGENT_ID
from tests.edge.orchestrator_world import EdgeWorld, edge_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure) as served:
        yield served


def opened(world: EdgeWorld, token: str | None = None, **options: Any) -> connect:
    return connect(world.ws_url, additional_headers=world.headers(token), compression=None, **options)


async def send(ws: ClientConnection, **frame: Any) -> None:
    await ws.send(json.dumps(frame))


async def frame_of(ws: ClientConnection, seconds: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def until(ws: ClientConnection, predicate: Any, seconds: float = 5) -> list[dict[str, Any]]:
    """Frames up to and including the first one `predicate` accepts."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(seconds):
        while True:
            frames.append(json.loads(await ws.recv()))
            if predicate(frames[-1]):
                return frames


def round_done(frame: dict[str, Any]) -> bool:
    return frame.get("kind") == "round_completed"


async def closed_with(ws: ClientConnection, seconds: float = 5) -> tuple[int | None, str | None]:
    """The close code and reason the server closed `ws` with (frames before it are skipped)."""
    async with asyncio.timeout(seconds):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason


# Authentication at connect.


async def test_a_connection_without_a_token_is_closed_with_4401(world: EdgeWorld) -> None:
    async with connect(world.ws_url, compression=None) as ws:
        code, reason = await closed_with(ws)
    assert code == 4401
    assert "Bearer" in (reason or "")


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "expired", "other-audience"],
)
async def test_a_bad_token_is_closed_with_4401_naming_why(world: EdgeWorld, token: str) -> None:
    tokens = {
        "not-a-jwt": "not-a-jwt",
        "expired": world.token(lifetime=-3600),
        "other-audience": world.fakes.signer.token("urn:macp:service:conversation"),
    }
    async with opened(world, tokens[token]) as ws:
        code, reason = await closed_with(ws)
    assert code == 4401
    assert (reason or "").startswith("invalid token:")


async def test_the_token_may_come_in_the_query_for_browsers(world: EdgeWorld) -> None:
    async with connect(f"{world.ws_url}?access_token={world.token()}", compression=None) as ws:
        await send(ws, action="ping", request_id="r-1")
        assert await frame_of(ws) == {"type": "pong", "action": "ping", "request_id": "r-1"}


async def test_the_connection_closes_with_4401_when_its_token_expires(world: EdgeWorld) -> None:
    async with opened(world, world.token(lifetime=1.5)) as ws:
        started = time.monotonic()
        code, reason = await closed_with(ws, seconds=10)
    assert code == 4401
    assert "expired" in (reason or "")
    assert 0.5 < time.monotonic() - started < 5


async def test_a_revoked_token_closes_its_open_connection_with_4401_within_the_cache_window(
    world: EdgeWorld,
) -> None:
    conversation = str(uuid.uuid4())
    token, other = world.token(), world.token()
    async with opened(world, token) as ws, opened(world, other) as bystander:
        await send(ws, action="subscribe", conversation_id=conversation)
        assert (await frame_of(ws))["type"] == "subscribed"
        await world.revoke(token)
        revoked_at = time.monotonic()
        code, reason = await closed_with(ws)
        ended_after = time.monotonic() - revoked_at
        # Another token's connection is untouched.
        await send(bystander, action="ping", request_id="still")
        assert (await frame_of(bystander))["request_id"] == "still"
    assert code == 4401
    assert "revoked" in (reason or "")
    # The revocation cache's 1 s, a sweep's quarter second, and room for a busy machine.
    assert ended_after < 3


# Conversations.


async def test_subscribe_then_message_streams_the_round_as_event_frames(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    audiences_before = len(world.orchestrator.audiences)
    async with opened(world) as ws:
        await send(ws, action="subscribe", conversation_id=conversation, request_id="s-1")
        assert await frame_of(ws) == {
            "type": "subscribed",
            "action": "subscribe",
            "request_id": "s-1",
            "conversation_id": conversation,
            "last_event_id": None,
        }
        await send(ws, action="message", conversation_id=conversation, text="hello there")
        ack = await frame_of(ws)
        assert (ack["type"], ack["action"], ack["conversation_id"]) == ("ack", "message", conversation)
        uuid.UUID(ack["message_id"])  # generated by the edge, echoed back
        assert ack["request_id"]  # generated too
        frames = await until(ws, round_done)
    kinds = [frame["kind"] for frame in frames]
    assert kinds == [
        "message_accepted",
        "turn_started",
        "token_delta",
        "token_delta",
        "token_delta",
        "turn_completed",
        "round_completed",
    ]
    accepted = frames[0]
    assert accepted["type"] == "event"
    assert accepted["conversation_id"] == conversation
    assert accepted["event_id"] == accepted["event"]["event_id"]
    # Proto field names, int64 as strings, enums by name.
    assert accepted["event"]["message_accepted"] == {
        "message_id": ack["message_id"],
        "sequence": "1",
        "duplicate": False,
        "queue_position": 0,
    }
    text = "".join(
        frame["event"]["token_delta"]["text"] for frame in frames if frame["kind"] == "token_delta"
    )
    assert text == "echo: hello there"
    assert frames[-2]["event"]["turn_completed"]["outcome"] == "TURN_OUTCOME_COMPLETED"
    assert frames[-2]["event"]["turn_completed"]["agent_id"] == AGENT_ID
    # The stream went through the caller's token exchanged for the orchestrator.
    assert world.orchestrator.audiences[audiences_before:] == ["urn:macp:service:orchestrator"]


async def test_a_message_without_subscribe_opens_the_stream_and_keeps_the_clients_id(
    world: EdgeWorld,
) -> None:
    conversation, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with opened(world) as ws:
        await send(ws, action="message", conversation_id=conversation, message_id=message_id, text="hi")
        ack = await frame_of(ws)
        assert (ack["type"], ack["message_id"]) == ("ack", message_id)
        frames = await until(ws, round_done)
        assert frames[0]["event"]["message_accepted"]["message_id"] == message_id
        # The same stream carries bids and cancels.
        await send(ws, action="bid", conversation_id=conversation, agent_id=AGENT_ID, score=0.75)
        assert (await frame_of(ws))["type"] == "ack"
        results = await frame_of(ws)
        assert results["event"]["bid_results"]["bids"][0]["score"] == 0.75
        await send(ws, action="cancel", conversation_id=conversation, reason="enough")
        assert (await frame_of(ws))["type"] == "ack"
        cancelled = await frame_of(ws)
        assert cancelled["event"]["round_completed"]["reason"] == "ROUND_END_REASON_CANCELLED"


async def test_two_clients_of_one_conversation_see_the_same_events(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    before = world.orchestrator.joined
    async with opened(world) as first, opened(world) as second:
        for ws in (first, second):
            await send(ws, action="subscribe", conversation_id=conversation)
            assert (await frame_of(ws))["type"] == "subscribed"
        # "subscribed" means the Join was sent; live events start once the orchestrator has it.
        await _eventually(lambda: world.orchestrator.joined == before + 2)
        await send(first, action="message", conversation_id=conversation, text="to both")
        await frame_of(first)  # the ack
        seen = [await until(ws, round_done) for ws in (first, second)]
    assert [f["event_id"] for f in seen[0]] == [f["event_id"] for f in seen[1]]


async def test_resume_after_an_event_replays_what_followed_it(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    async with opened(world) as ws:
        await send(ws, action="message", conversation_id=conversation, text="one two")
        await frame_of(ws)
        frames = await until(ws, round_done)
    seen = [frame["event_id"] for frame in frames]
    async with opened(world) as ws:
        await send(ws, action="subscribe", conversation_id=conversation, last_event_id=seen[2])
        subscribed = await frame_of(ws)
        assert (subscribed["type"], subscribed["last_event_id"]) == ("subscribed", seen[2])
        replayed = await until(ws, round_done)
    assert [frame["event_id"] for frame in replayed] == seen[3:]


async def test_resume_from_an_event_no_longer_retained_is_an_error_frame_and_the_connection_stays(
    world: EdgeWorld,
) -> None:
    conversation = str(uuid.uuid4())
    async with opened(world) as ws:
        await send(ws, action="subscribe", conversation_id=conversation, last_event_id="999-0")
        frames = [await frame_of(ws), await frame_of(ws)]
        error = next(frame for frame in frames if frame["type"] == "error")
        assert error["code"] == "OUT_OF_RANGE"
        assert error["conversation_id"] == conversation
        assert error["subscribed"] is False
        assert "999-0" in error["message"]
        await send(ws, action="ping")
        assert (await frame_of(ws))["type"] == "pong"


async def test_a_failed_stream_becomes_an_error_frame_naming_the_conversation(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    async with opened(world) as ws:
        await send(ws, action="message", conversation_id=conversation, text="fail")
        frames = await until(ws, lambda frame: frame["type"] == "error")
        error = frames[-1]
        assert error["code"] == "INTERNAL"
        assert conversation in error["message"]
        assert "failed on purpose" in error["message"]
        # The next action opens a new stream.
        await send(ws, action="message", conversation_id=conversation, text="again")
        assert (await until(ws, round_done))[-1]["kind"] == "round_completed"


async def test_unsubscribe_and_disconnect_end_the_streams(world: EdgeWorld) -> None:
    open_streams = world.orchestrator.open_by_conversation
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    async with opened(world) as ws:
        for conversation in (first, second):
            await send(ws, action="subscribe", conversation_id=conversation)
            await frame_of(ws)
        await _eventually(lambda: (open_streams[first], open_streams[second]) == (1, 1))
        await send(ws, action="unsubscribe", conversation_id=first)
        assert (await frame_of(ws))["type"] == "unsubscribed"
        await _eventually(lambda: (open_streams[first], open_streams[second]) == (0, 1))
    await _eventually(lambda: open_streams[second] == 0)


async def _eventually(condition: Any, seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {seconds} s")


# Bad frames: an error frame each, the connection stays, nothing reaches the orchestrator.


@pytest.mark.parametrize(
    ("frame", "code", "fragment"),
    [
        ("{not json", "INVALID_JSON", "not valid JSON"),
        ("[1, 2]", "INVALID_JSON", "JSON object"),
        ('{"text": "no action"}', "INVALID_ARGUMENT", "action: must be one of"),
        ('{"action": "shout"}', "INVALID_ARGUMENT", "action: must be one of"),
        ('{"action": "message", "conversation_id": "%s"}', "INVALID_ARGUMENT", "text: required"),
        (
            '{"action": "message", "conversation_id": "%s", "text": ""}',
            "INVALID_ARGUMENT",
            "text: must be at least",
        ),
        (
            '{"action": "message", "conversation_id": "nope", "text": "x"}',
            "INVALID_ARGUMENT",
            "conversation_id:",
        ),
        (
            '{"action": "message", "conversation_id": "%s", "text": 5}',
            "INVALID_ARGUMENT",
            "text: must be a JSON string",
        ),
        (
            '{"action": "message", "conversation_id": "%s", "text": "x", "message_id": "m-1"}',
            "INVALID_ARGUMENT",
            "message_id:",
        ),
        (
            '{"action": "message", "conversation_id": "%s", "text": "x", "colour": "red"}',
            "INVALID_ARGUMENT",
            "colour: unknown field",
        ),
        (
            '{"action": "bid", "conversation_id": "%s", "agent_id": "%s", "score": "high"}',
            "INVALID_ARGUMENT",
            "score: must be a JSON number",
        ),
        (
            '{"action": "bid", "conversation_id": "%s", "agent_id": "%s", "score": 1.5}',
            "INVALID_ARGUMENT",
            "score: must be greater than or equal to 0",
        ),
        (
            '{"action": "subscribe", "conversation_id": "%s", "last_event_id": "a b"}',
            "INVALID_ARGUMENT",
            "last_event_id:",
        ),
        ('{"action": "ping", "request_id": 7}', "INVALID_ARGUMENT", "request_id:"),
    ],
)
async def test_a_bad_frame_gets_an_error_frame_naming_the_field_and_the_connection_stays(
    world: EdgeWorld, frame: str, code: str, fragment: str
) -> None:
    conversation = str(uuid.uuid4())
    text = frame.replace("%s", conversation, 1).replace("%s", AGENT_ID)
    streams = world.orchestrator.converse_streams
    async with opened(world) as ws:
        await ws.send(text)
        error = await frame_of(ws)
        assert (error["type"], error["code"]) == ("error", code), error
        assert fragment in error["message"], error
        await send(ws, action="ping")
        assert (await frame_of(ws))["type"] == "pong"
    assert world.orchestrator.converse_streams == streams


async def test_a_bad_frame_on_a_live_stream_leaves_the_stream_alive(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    async with opened(world) as ws:
        await send(ws, action="subscribe", conversation_id=conversation)
        await frame_of(ws)
        await send(ws, action="message", conversation_id=conversation, text="x" * 32001)
        assert "text: must be at most" in (await frame_of(ws))["message"]
        await send(ws, action="message", conversation_id=conversation, text="still here")
        await frame_of(ws)
        frames = await until(ws, round_done)
    assert frames[0]["kind"] == "message_accepted"


async def test_a_binary_frame_without_an_open_utterance_gets_an_error_frame(world: EdgeWorld) -> None:
    """Binary frames carry a spoken message's audio (docs/websocket.md, "Voice"); with none open
    there is nothing for them to be."""
    async with opened(world) as ws:
        await ws.send(b"\x00\x01")
        error = await frame_of(ws)
        assert error["code"] == "INVALID_ARGUMENT"
        assert error["message"].startswith("audio: a binary frame is an utterance's audio")


# Limits: frame size, subscriptions, idle time, rate, and the slow client.


@pytest.fixture(scope="module")
async def tight(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    settings = {
        "MACP_EDGE_WS_MAX_FRAME_BYTES": "2048",
        "MACP_EDGE_WS_MAX_SUBSCRIPTIONS": "1",
        "MACP_EDGE_WS_IDLE_TIMEOUT_SECONDS": "1",
        "MACP_EDGE_WS_SEND_QUEUE": "8",
    }
    async with edge_world(infrastructure, settings) as served:
        yield served


async def test_a_frame_over_the_size_limit_closes_with_1009(tight: EdgeWorld) -> None:
    async with opened(tight) as ws:
        await send(ws, action="message", conversation_id=str(uuid.uuid4()), text="x" * 3000)
        code, _ = await closed_with(ws)
    assert code == 1009


async def test_the_frame_limit_counts_bytes_not_characters(tight: EdgeWorld) -> None:
    # About 1,200 characters but 2,300 bytes in UTF-8 (sent unescaped): over the 2,048-byte limit.
    frame = {"action": "message", "conversation_id": str(uuid.uuid4()), "text": "é" * 1100}
    async with opened(tight) as ws:
        await ws.send(json.dumps(frame, ensure_ascii=False))
        code, _ = await closed_with(ws)
    assert code == 1009


async def test_subscriptions_per_connection_are_bounded(tight: EdgeWorld) -> None:
    async with opened(tight) as ws:
        await send(ws, action="subscribe", conversation_id=str(uuid.uuid4()))
        assert (await frame_of(ws))["type"] == "subscribed"
        await send(ws, action="subscribe", conversation_id=str(uuid.uuid4()))
        error = await frame_of(ws)
        assert error["code"] == "RESOURCE_EXHAUSTED"
        assert "MACP_EDGE_WS_MAX_SUBSCRIPTIONS" in error["message"]


async def test_an_idle_connection_without_subscriptions_is_closed_with_4408(tight: EdgeWorld) -> None:
    async with opened(tight) as idle, opened(tight) as following:
        await send(following, action="subscribe", conversation_id=str(uuid.uuid4()))
        await frame_of(following)
        code, reason = await closed_with(idle)
        assert code == 4408
        assert "idle" in (reason or "")
        await asyncio.sleep(1.5)
        # A connection following a conversation is kept (its heartbeats say it is alive).
        await send(following, action="ping")
        assert (await frame_of(following))["type"] == "pong"


async def test_a_connection_that_stops_following_is_idle_again(tight: EdgeWorld) -> None:
    # FOLLOWING -> IDLE (services/edge/ws/state.py): the idle clock starts when the last
    # subscription ends, so a connection following nothing is closed after the idle timeout.
    async with opened(tight) as ws:
        conversation_id = str(uuid.uuid4())
        await send(ws, action="subscribe", conversation_id=conversation_id)
        assert (await frame_of(ws))["type"] == "subscribed"
        await asyncio.sleep(1.5)  # past the idle timeout, while following: kept
        await send(ws, action="unsubscribe", conversation_id=conversation_id)
        assert (await frame_of(ws))["type"] == "unsubscribed"
        code, reason = await closed_with(ws, seconds=3)
        assert code == 4408
        assert "idle" in (reason or "")


def _frames_past_the_socket_buffers(frame_bytes: int = 4000) -> int:
    """Enough 4 kB frames to fill the kernel's largest send buffer twice over (so the edge's own
    queue is what overflows), bounded."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
            largest = int(wmem.read().split()[2])
    except (OSError, ValueError, IndexError):
        largest = 4 << 20
    return min(20_000, max(3000, 2 * largest // frame_bytes + 100))


def _slow_socket(url: str) -> socket.socket:
    """A connected socket with a tiny receive buffer, so the edge sees a client that reads slowly."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_a_client_that_cannot_keep_up_is_closed_with_1013_and_slows_nobody(tight: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    flood = _frames_past_the_socket_buffers()
    async with (
        opened(tight, sock=_slow_socket(tight.url), max_queue=1) as slow,
        connect(f"{tight.ws_url}?access_token={tight.token()}", compression=None, max_queue=None) as fast,
    ):
        for ws in (slow, fast):
            await send(ws, action="subscribe", conversation_id=conversation)
            await frame_of(ws)
        await send(fast, action="message", conversation_id=conversation, text=f"flood {flood}")
        started = time.monotonic()
        frames = await until(
            fast, lambda frame: frame.get("event", {}).get("token_delta", {}).get("index") == flood - 1
        )
        fast_seconds = time.monotonic() - started
        # The slow one has not read a frame; once it does, it finds what fit, then the close.
        await asyncio.sleep(0.5)
        code, reason = await closed_with(slow, seconds=15)
    assert len([frame for frame in frames if frame.get("kind") == "token_delta"]) == flood
    assert fast_seconds < 5
    assert (code, reason and reason.split(":")[0]) == (1013, "too slow")


async def test_each_action_counts_against_the_rate_limits(infrastructure: Infrastructure) -> None:
    # The connect and two frames are admitted; the third frame is refused, the connection stays.
    async with edge_world(infrastructure, {"MACP_RATE_LIMIT_TENANT": "3/hour burst 3"}) as limited:
        async with opened(limited) as ws:
            for _ in range(2):
                await send(ws, action="ping")
                assert (await frame_of(ws))["type"] == "pong"
            await send(ws, action="ping", request_id="over")
            refused = await frame_of(ws)
            assert (refused["code"], refused["action"], refused["request_id"]) == (
                "RESOURCE_EXHAUSTED",
                "ping",
                "over",
            )
            assert refused["retry_after"] >= 1
            assert "rate limit tenant" in refused["message"]
            await ws.ping()  # still open (a protocol ping is not an action)
        # A new connection over the limit is closed at once.
        async with opened(limited) as again:
            code, reason = await closed_with(again)
        assert code == 4429
        assert "rate limit" in (reason or "")


async def test_bad_tokens_at_connect_count_per_source_address_then_close_with_4429(
    infrastructure: Infrastructure,
) -> None:
    # As an HTTP request's: failed authentications counted by the address Envoy appended; past the
    # limit, that address's connects without a token are closed with 4429 at once.
    async with edge_world(infrastructure, {"MACP_RATE_LIMIT_SOURCE_FAILURES": "2/min"}) as limited:

        def from_address(address: str, token: str | None) -> connect:
            headers = {"x-forwarded-for": address, **(limited.headers(token) if token else {})}
            return connect(limited.ws_url, additional_headers=headers, compression=None)

        codes = []
        for token in ("forged", "forged", None):
            async with from_address("198.51.100.7", token) as ws:
                codes.append((await closed_with(ws))[0])
        async with from_address("198.51.100.8", None) as ws:
            codes.append((await closed_with(ws))[0])
        # A valid token is served, from the refused address too.
        async with from_address("198.51.100.7", limited.token()) as ws:
            await send(ws, action="ping")
            assert (await frame_of(ws))["type"] == "pong"
    assert codes == [4401, 4401, 4429, 4401]


async def test_a_plain_get_of_the_websocket_url_says_it_needs_an_upgrade(world: EdgeWorld) -> None:
    async with world.client() as client:
        response = await client.get("/v1/ws")
    assert response.status_code == 426
    assert response.json()["code"] == "UPGRADE_REQUIRED"


# The edge's own protocol (services/edge/ws/link.py): heartbeats, paths, graceful shutdown.


async def _raw_client_ignoring_pings(url: str, token: str) -> tuple[int, str | None]:
    """A client that completes the handshake and then never answers a ping: the close it gets."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    client = WSConnection(ConnectionType.CLIENT)
    writer.write(client.send(WsRequest(host=host, target=f"/v1/ws?access_token={token}")))
    try:
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise AssertionError("the edge dropped the connection without a close frame")
                client.receive_data(data)
                for event in client.events():
                    if isinstance(event, CloseConnection):
                        return event.code, event.reason
                    # AcceptConnection and Ping alike: nothing is sent back.
    finally:
        writer.close()


async def test_a_client_that_never_answers_heartbeats_is_closed_with_1011(
    infrastructure: Infrastructure,
) -> None:
    beating = {"MACP_EDGE_WS_HEARTBEAT_SECONDS": "0.3", "MACP_EDGE_WS_HEARTBEAT_TIMEOUT_SECONDS": "1"}
    async with edge_world(infrastructure, beating) as served:
        code, reason = await _raw_client_ignoring_pings(served.url, served.token())
        assert (code, reason) == (1011, "keepalive ping timeout")
        # A client that answers them (the websockets client does by itself) stays, heartbeat after heartbeat.
        async with opened(served, ping_interval=None) as ws:
            await asyncio.sleep(2.0)
            await send(ws, action="ping")
            assert (await frame_of(ws))["type"] == "pong"


async def test_only_the_api_path_upgrades(world: EdgeWorld) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(world.ws_url.replace("/v1/ws", "/v1/elsewhere"), compression=None):
            pass
    assert refused.value.response.status_code == 403


async def test_a_graceful_shutdown_closes_open_connections_with_1012(infrastructure: Infrastructure) -> None:
    async with edge_world(infrastructure) as served:
        ws = await opened(served)
        await send(ws, action="ping")
        assert (await frame_of(ws))["type"] == "pong"
    code, _ = await closed_with(ws)
    assert code == 1012
