"""`python -m services.example_tools <weather|calculator> --port N`: serve one example MCP server
over Streamable HTTP at http://127.0.0.1:N/mcp."""

from __future__ import annotations

import argparse
import sys

import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.example_tools.servers import SERVERS


def with_health(app: ASGIApp) -> ASGIApp:
    """`app` answering GET /healthz 200 itself, as every process `macp up` supervises does; every
    other request (and the lifespan, which starts the MCP session manager) is the app's."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await PlainTextResponse("ok")(scope, receive, send)
            return
        await app(scope, receive, send)

    return serve


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.example_tools", description=__doc__)
    parser.add_argument("server", choices=sorted(SERVERS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = with_health(SERVERS[args.server]().streamable_http_app(host=args.host))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
