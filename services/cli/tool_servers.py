"""`macp tool-servers list|create|delete`: the signed-in tenant's MCP servers at the tool gateway,
through the running stack's edge (`/v1/tool-servers`), and the platform's it shares.

`create` registers one: `--name` (its tools' namespace) and `--url` (its Streamable HTTP
endpoint), and how the gateway authenticates to it (`--auth`): `none`, `token-exchange`, `static`
(`--header`, the value read with `--secret-stdin`) or `client-credentials` (`--token-url`,
`--client-id`, the client secret read with `--secret-stdin`, `--scope`, `--resource`). A secret
is never taken on the command line, where the shell's history and `ps` would keep it, and never
printed: the gateway does not return it. The token is `--token`, else `$MACP_ACCESS_TOKEN`, else
the seeded local admin signs in (as `macp audit` does).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any, TextIO

from services.cli.accounts import EXIT_USAGE, CliError, add_data_dir, report, running_stack
from services.cli.login import TOKEN_VARIABLE, edge_token
from services.cli.rest import request_json, table

AUTH_MODES = {
    "none": "UPSTREAM_AUTH_NONE",
    "token-exchange": "UPSTREAM_AUTH_TOKEN_EXCHANGE",
    "static": "UPSTREAM_AUTH_STATIC",
    "client-credentials": "UPSTREAM_AUTH_CLIENT_CREDENTIALS",
}
PAGE_SIZE = 100


def add_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token", default=None, help=f"an access token for the edge (default: ${TOKEN_VARIABLE})"
    )
    parser.add_argument("--json", action="store_true", help="print the edge's JSON answer")
    add_data_dir(parser)


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the tenant's servers and the platform's")
    add_token(listing)
    create = actions.add_parser("create", help="register an MCP server", description=__doc__)
    create.add_argument("--name", required=True, help="the server's name, its tools' namespace")
    create.add_argument("--url", required=True, help="its Streamable HTTP endpoint")
    create.add_argument("--version-label", default="", help="a free label of its version")
    create.add_argument(
        "--auth", choices=list(AUTH_MODES), default="none", help="how the gateway signs in to it"
    )
    create.add_argument("--header", default="", help="static: the header the gateway sends")
    create.add_argument("--token-url", default="", help="client-credentials: the token endpoint")
    create.add_argument("--client-id", default="", help="client-credentials: the gateway's client there")
    create.add_argument("--scope", default="", help="client-credentials: the scope to ask for")
    create.add_argument("--resource", default="", help="client-credentials: the RFC 8707 resource")
    create.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the secret (static: the header's value; client-credentials: the client secret) from stdin",
    )
    add_token(create)
    delete = actions.add_parser("delete", help="remove one of the tenant's servers")
    delete.add_argument("id", help="the server's id")
    delete.add_argument("--etag", default="", help="remove it only while it has this etag")
    add_token(delete)


def registration(args: argparse.Namespace, secret: str) -> dict[str, Any]:
    """The `ToolServer` JSON body `create` sends."""
    body: dict[str, Any] = {"name": args.name, "url": args.url, "auth": AUTH_MODES[args.auth]}
    if args.version_label:
        body["versionLabel"] = args.version_label
    if args.auth == "static":
        body["staticCredential"] = {"header": args.header, "value": secret}
    if args.auth == "client-credentials":
        grant = {
            "tokenUrl": args.token_url,
            "clientId": args.client_id,
            "clientSecret": secret,
            "scope": args.scope,
            "resource": args.resource,
        }
        body["clientCredentials"] = {name: value for name, value in grant.items() if value}
    return body


def read_secret(args: argparse.Namespace, stdin: TextIO) -> str:
    needs_secret = args.auth in ("static", "client-credentials")
    if args.secret_stdin != needs_secret:
        raise CliError(
            f"--secret-stdin: {'required' if needs_secret else 'not taken'} with --auth {args.auth}",
            EXIT_USAGE,
        )
    if not needs_secret:
        return ""
    secret = stdin.readline().rstrip("\r\n")
    if not secret:
        raise CliError("--secret-stdin: stdin gave no secret", EXIT_USAGE)
    return secret


def describe(server: dict[str, Any]) -> str:
    """How the gateway reaches it, secrets never included (the edge returns none)."""
    auth = str(server.get("auth", "")).removeprefix("UPSTREAM_AUTH_").lower().replace("_", "-")
    if auth == "static" and server.get("staticCredential"):
        return f"{auth} ({server['staticCredential'].get('header', '')})"
    if auth == "client-credentials" and server.get("clientCredentials"):
        grant = server["clientCredentials"]
        return f"{auth} ({grant.get('clientId', '')} at {grant.get('tokenUrl', '')})"
    return auth


def render_servers(servers: list[dict[str, Any]]) -> str:
    rows = [("id", "name", "url", "auth", "scope", "version")]
    for server in servers:
        owner = "platform" if server.get("platform") else "tenant"
        rows.append(
            (
                server.get("id", ""),
                server.get("name", ""),
                server.get("url", ""),
                describe(server),
                owner,
                server.get("versionLabel", "") or "-",
            )
        )
    lines = table(rows)
    if not servers:
        lines.append("(no tool servers)")
    return "\n".join(lines)


def all_servers(front_url: str, token: str) -> list[dict[str, Any]]:
    servers: list[dict[str, Any]] = []
    page_token = ""
    while True:
        query = {"page_size": str(PAGE_SIZE), **({"page_token": page_token} if page_token else {})}
        page = request_json("GET", f"{front_url}/v1/tool-servers?{urllib.parse.urlencode(query)}", token)
        servers.extend(page.get("toolServers", []))
        page_token = page.get("nextPageToken", "")
        if not page_token:
            return servers


def execute(front_url: str, token: str, args: argparse.Namespace, out: TextIO, stdin: TextIO) -> None:
    """The action against the edge at `front_url`, printed to `out`."""
    if args.action == "list":
        servers = all_servers(front_url, token)
        print(
            json.dumps(servers, indent=2, sort_keys=True) if args.json else render_servers(servers), file=out
        )
    elif args.action == "create":
        body = registration(args, read_secret(args, stdin))
        created = request_json("POST", f"{front_url}/v1/tool-servers", token, body)
        print(
            json.dumps(created, indent=2, sort_keys=True) if args.json else render_servers([created]),
            file=out,
        )
    else:
        path = urllib.parse.quote(args.id, safe="")
        headers = {"if-match": f'"{args.etag}"'} if args.etag else {}
        request_json("DELETE", f"{front_url}/v1/tool-servers/{path}", token, headers=headers)
        print(f"deleted tool server {args.id}", file=out)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        execute(stack.front_url, edge_token(stack, args.token), args, sys.stdout, sys.stdin)

    return report(f"macp tool-servers {args.action}", body)
