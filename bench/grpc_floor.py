"""The floor under any Python gRPC service on this machine: an empty grpc.aio unary method.

    .venv/bin/python -m bench.grpc_floor --port N     # serves until stopped (the benchmarks start it)

The server has no interceptors, no validation, no store behind it: a handler that answers the
request's own bytes. Called straight (no Envoy) by the same closed-loop client the benchmarks use,
its latency at a given concurrency bounds what any service built on grpc.aio can answer here, since
every real method does this much and more. A figure the floor itself misses is out of reach on this
machine, whatever the service does.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import grpc

from services.stack.config import free_port

SERVICE = "macp.bench.v1.Floor"
METHOD = f"/{SERVICE}/Echo"
READY_SECONDS = 20.0


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@contextmanager
def floor_server() -> Iterator[tuple[str, int]]:
    """The floor server as its own process, as the services run: its address and pid."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", "--port", str(port)])
    try:
        yield f"127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


@asynccontextmanager
async def floor_echo(address: str) -> AsyncIterator[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]]:
    """A channel to the floor server, open once it answers, and its Echo method."""
    async with grpc.aio.insecure_channel(address) as channel:
        echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=None
        )
        deadline = time.monotonic() + READY_SECONDS
        while True:
            try:
                await echo(b"ready", timeout=1, wait_for_ready=True)
                break
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
        yield echo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True, help="the loopback port to serve on")
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
