"""`python -m services.example_tools <weather|calculator> --port N [--url U --issuer I --jwks-url J]`:
serve one example MCP server over Streamable HTTP at http://127.0.0.1:N/mcp.

With `--url` (the server's own MCP URL, as the gateway reaches it), the server accepts only MACP
access tokens of issuer `--issuer` addressed to that URL, verified with the keys at `--jwks-url`,
and shows the claims of those it accepted at GET /claims (audience.py); `macp up` and compose run
them so."""

from __future__ import annotations

import argparse
import sys

import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.example_tools.audience import RequireAudience, keys_over_http
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
    parser.add_argument("--url", default=None, help="its own MCP URL: accept only tokens addressed to it")
    parser.add_argument("--issuer", default=None, help="the token issuer (with --url)")
    parser.add_argument("--jwks-url", default=None, help="the issuer's JWKS document (with --url)")
    args = parser.parse_args()
    app: ASGIApp = SERVERS[args.server]().streamable_http_app(host=args.host)
    if args.url:
        if not (args.issuer and args.jwks_url):
            parser.error("--url needs --issuer and --jwks-url")
        app = RequireAudience(app, audience=args.url, issuer=args.issuer, keys=keys_over_http(args.jwks_url))
    app = with_health(app)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
