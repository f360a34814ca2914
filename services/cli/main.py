"""The `macp` command: one entry point for the native stack and its tooling.

Each subcommand lives in its own module exposing `configure(parser)` and `run(args) -> int`; this
file only routes, and imports a subcommand's module only when it is the one asked for, so
`macp status` stays fast and a broken optional dependency cannot break every command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("services.stack.up", "start the whole mesh natively and wait until every part is SERVING"),
    "status": ("services.stack.status", "show what the native stack runs and its health"),
    "serve": ("services.cli.serve", "run one service (or the edge) in the foreground"),
    "envoy-render": ("services.stack.envoy_render", "render the Envoy configuration files in envoy/"),
    "k8s-render": (
        "services.stack.kubernetes_render",
        "render the Kubernetes manifests in deploy/kubernetes/",
    ),
    "tenant": ("services.cli.tenant", "manage tenants on the running stack (create)"),
    "user": ("services.cli.user", "manage local users on the running stack (create)"),
    "client": ("services.cli.client", "manage OAuth clients on the running stack (register)"),
    "login": ("services.cli.login", "sign in with a username and password; print the access token"),
    "demo": (
        "services.cli.demo",
        "three agents, a conversation, one message: the round printed live",
    ),
    "usage": ("services.cli.usage", "show the tenant's usage or its invoice preview from the running stack"),
    "plan": ("services.cli.plan", "set the plan a tenant is metered by on the running stack (operators)"),
    "limits": ("services.cli.limits", "show the edge's rate limits and where the signed-in caller stands"),
    "audit": ("services.cli.audit", "show the tenant's audit log from the running stack (tenant admins)"),
    "tool-servers": (
        "services.cli.tool_servers",
        "list, register or remove the tenant's MCP servers at the tool gateway",
    ),
    "tools": ("services.cli.tools", "list the tenant's tool catalogue, or call one tool"),
    "webhooks": (
        "services.cli.webhooks",
        "subscribe endpoints to conversation events; list, show or remove them; see failed deliveries",
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="macp", description="MACP: a multi-agent communication platform")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            importlib.import_module(module_name).configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(args_list)
    module_name = SUBCOMMANDS[args.command][0]
    result: int = importlib.import_module(module_name).run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
