"""A stand-in for a MACP process in launcher tests: `python -m tests.stack.fake_service KIND PORT NAME`.

KIND `service` serves grpc.health.v1 (SERVING) on PORT; `edge` answers GET /healthz with 200.
It exits 0 on SIGTERM, like the real processes, so the launcher's stop path is what is tested.
While a file `crash-NAME` exists in $MACP_DATA_DIR it exits 3 at once instead, as a process
that cannot start would: what a crash loop is made of.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def serve_health(port: int) -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(1)


class Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 404
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_edge(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), Healthz)
    signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


def main() -> int:
    kind, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if (Path(os.environ["MACP_DATA_DIR"]) / f"crash-{name}").exists():
        print(f"{name}: told to crash (crash-{name} exists); exiting with code 3", flush=True)
        return 3
    if kind == "service":
        asyncio.run(serve_health(port))
    else:
        serve_edge(port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
