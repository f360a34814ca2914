"""What an idle `/v1/ws` connection keeps (docs/benchmarks.md section 8 measures its bytes): the link
keeps only wsproto's frame protocol once the handshake is accepted, and connections presenting one
token share one caller."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from types import FunctionType, MethodType, ModuleType, SimpleNamespace

import h11
import pytest
from websockets.asyncio.client import ClientConnection, connect
from wsproto.events import Request
from wsproto.handshake import H11Handshake

from services.edge.ws.link import WebSocketLink
from services.runtime.principal import Caller
from services.stack.infra import Infrastructure
from tests.edge.orchestrator_world import EdgeWorld, edge_world


class Recorder:
    """The edge's side of a link in these tests: it keeps the frames it hears."""

    def __init__(self) -> None:
        self.texts: asyncio.Queue[str] = asyncio.Queue()

    def on_text(self, text: str) -> None:
        self.texts.put_nowait(text)

    def on_binary(self) -> None:
        pass

    def on_closed(self) -> None:
        pass


def reachable(root: object, depth: int) -> list[object]:
    """Objects reachable from `root` within `depth` references, not through classes, modules,
    functions or the transport (which reaches the event loop and so everything)."""
    seen = {id(root)}
    found: list[object] = []
    frontier = [root]
    for _ in range(depth):
        following: list[object] = []
        for obj in frontier:
            for referent in gc.get_referents(obj):
                if id(referent) in seen or isinstance(
                    referent, (type, ModuleType, FunctionType, MethodType, asyncio.BaseTransport)
                ):
                    continue
                seen.add(id(referent))
                found.append(referent)
                following.append(referent)
        frontier = following
    return found


async def test_an_accepted_link_keeps_no_handshake_state() -> None:
    links: set[WebSocketLink] = set()
    peers: list[Recorder] = []

    async def accept(link: WebSocketLink, request: Request) -> None:
        peers.append(Recorder())
        link.accept(peers[-1])

    factory = WebSocketLink.factory(
        accept,
        path="/v1/ws",
        max_frame_bytes=4096,
        max_waiting=8,
        heartbeat_seconds=20,
        heartbeat_timeout_seconds=20,
    )
    server = await asyncio.get_running_loop().create_server(
        lambda: factory(server_state=SimpleNamespace(connections=links)), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with connect(f"ws://127.0.0.1:{port}/v1/ws", compression=None) as ws:
            await ws.send("first")
            (link,), (peer,) = links, peers
            assert await asyncio.wait_for(peer.texts.get(), 5) == "first"
            # wsproto's WSConnection would keep its handshake (h11's connection, the request and its
            # headers: ~4 KiB) for the connection's life; the link keeps the frame protocol alone.
            kept = reachable(link, depth=6)
            assert not [obj for obj in kept if isinstance(obj, (H11Handshake, h11.Connection, Request))]
            await ws.send("second")  # and frames still flow both ways
            assert await asyncio.wait_for(peer.texts.get(), 5) == "second"
            assert link.send_text("back")
            assert await asyncio.wait_for(ws.recv(), 5) == "back"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure) as served:
        yield served


async def pinged(world: EdgeWorld, token: str) -> ClientConnection:
    ws = await connect(world.ws_url, additional_headers=world.headers(token), compression=None)
    await ws.send(json.dumps({"action": "ping"}))
    async with asyncio.timeout(5):
        assert json.loads(await ws.recv())["type"] == "pong"
    return ws


def callers_of(token: str) -> list[Caller]:
    gc.collect()
    return [obj for obj in gc.get_objects() if isinstance(obj, Caller) and obj.token == token]


@pytest.mark.integration
async def test_connections_with_one_token_share_its_caller(world: EdgeWorld) -> None:
    shared, other = world.token(), world.token()
    sockets = [await pinged(world, shared), await pinged(world, shared), await pinged(world, other)]
    try:
        # One Caller (its token and its Principal, ~2.6 KiB) for both connections of `shared`.
        assert len(callers_of(shared)) == 1
        assert len(callers_of(other)) == 1
    finally:
        for ws in sockets:
            await ws.close()
