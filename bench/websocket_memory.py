"""bench.websocket_memory: the edge's resident memory per idle, authenticated WebSocket connection.

Starts the real infrastructure, the token service, the conversation service and the edge (each its
own process, as `macp up` runs them; bench/slice.py) with Envoy in front, signs the seeded admin in,
then opens N connections (default 5,000) straight to the edge process on 127.0.0.1, each sending
one `ping` (so it is authenticated, rate-limited and answered, then idle), and reads the edge's RSS
from /proc (psutil) before and after. Bytes per idle connection = (after - before) / N. Target:
at most 12 KiB (docs/benchmarks.md section 8).

    .venv/bin/python -m bench.websocket_memory [--connections 5000]

The edge serves WebSockets with its own protocol (services/edge/ws/link.py). Load stays on loopback
and is bounded (at most 20,000).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from contextlib import ExitStack
from functools import partial

import psutil
from websockets.asyncio.client import ClientConnection, connect

from bench.slice import (
    READY_TIMEOUT_SECONDS,
    TOKEN,
    _environ,
    _wait,
    cluster_healthy,
    sign_in,
    start_apps_and_envoy,
)
from services.runtime.registry import EDGE
from services.stack.infra import ephemeral_infrastructure, scratch_data_dir
from services.stack.probes import answers
from services.stack.secrets import local_secrets
from services.stack.seed import seed

MAX_CONNECTIONS = 20_000
BATCH = 50  # connections opened at once: each handshake checks the token, a burst of them queues on Redis
SETTLE_SECONDS = 3.0


async def _open(url: str, token: str) -> ClientConnection:
    ws = await connect(
        url,
        additional_headers={"authorization": f"Bearer {token}"},
        compression=None,
        ping_interval=None,  # the server's heartbeats are enough; the client's own would be load
        open_timeout=30,
    )
    await ws.send(json.dumps({"action": "ping"}))
    reply = json.loads(await ws.recv())
    if reply.get("type") != "pong":
        raise RuntimeError(f"the edge answered {reply} to a ping")
    return ws


async def _measure(url: str, token: str, edge: psutil.Process, connections: int) -> dict[str, float]:
    # Warm up: the first connections load code paths and fill caches that later ones share.
    warm = [await _open(url, token) for _ in range(50)]
    for ws in warm:
        await ws.close()
    await asyncio.sleep(SETTLE_SECONDS)
    before = edge.memory_info().rss
    opened: list[ClientConnection] = []
    started = time.monotonic()
    try:
        while len(opened) < connections:
            batch = min(BATCH, connections - len(opened))
            opened += await asyncio.gather(*(_open(url, token) for _ in range(batch)))
        open_seconds = time.monotonic() - started
        await asyncio.sleep(SETTLE_SECONDS)
        after = edge.memory_info().rss
        alive = sum(1 for ws in opened if ws.close_code is None)
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return {
        "connections": connections,
        "alive": alive,
        "open_seconds": round(open_seconds, 1),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "bytes_per_connection": round((after - before) / connections),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--connections", type=int, default=5000, help=f"idle connections (≤ {MAX_CONNECTIONS})"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections must be 1 to {MAX_CONNECTIONS}")
    # Both ends hold a descriptor per connection, and the edge inherits this limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + 1024
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, needed)), hard))
    progress = partial(print, file=sys.stderr)
    with ExitStack() as stack:
        infrastructure = stack.enter_context(ephemeral_infrastructure(progress=progress))
        directory = stack.enter_context(scratch_data_dir("macp-bench-ws-"))
        environ = _environ(infrastructure.env)
        environ.update(local_secrets(directory, environ))
        environ["MACP_LOG_LEVEL"] = "warning"
        apps, envoy = start_apps_and_envoy(stack, environ, directory, ("conversation", TOKEN, EDGE.name))
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for app, process in apps:
            process.wait_ready(partial(answers, app.probe), max(0.0, deadline - time.monotonic()))
        for cluster in ("conversation", TOKEN, EDGE.name):
            _wait(
                f"Envoy saw no healthy {cluster}",
                partial(cluster_healthy, envoy.ports.admin, cluster),
                deadline,
            )
        admin = seed(directory, envoy.mesh_address, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"]).admin
        token = sign_in(envoy.url, admin)
        edge_app, edge_process = next((app, process) for app, process in apps if app.name == EDGE.name)
        assert edge_process.pid is not None
        url = f"ws://{edge_app.address}/v1/ws"
        result = asyncio.run(_measure(url, token, psutil.Process(edge_process.pid), args.connections))
        gc.collect()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
