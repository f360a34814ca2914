"""`macp login --username U [--password-stdin] [--client-id ID] [--json]`: a user's access token.

The password grant at the edge's /oauth2/token (Envoy's front port), with the public CLI client
`macp up` seeded unless `--client-id` names another public client. Prints the access token, or
with `--json` the whole token response. Without `--password-stdin` the seeded admin's password
comes from the data dir, and anyone else's is asked for on the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from services.cli.accounts import (
    EXIT_NOT_RUNNING,
    CliError,
    RunningStack,
    add_data_dir,
    local_admin,
    read_password,
    report,
    running_stack,
)
from services.stack import seed

TIMEOUT_SECONDS = 15.0

# Loopback requests must never go through a proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--username", required=True, help="the user to sign in as")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    parser.add_argument(
        "--client-id", default=None, help="a public client to sign in with (default: the CLI's)"
    )
    parser.add_argument(
        "--scope", default="", help="scopes to ask for, space-delimited (default: the client's)"
    )
    parser.add_argument("--json", action="store_true", help="print the whole token response as JSON")
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        client_id: str | None = args.client_id
        admin = seed.load(stack.data_dir)
        if client_id is None:
            client_id = local_admin(stack).cli_client_id
        if args.password_stdin:
            password = read_password(True, confirm=False)
        elif admin is not None and args.username == admin.username and admin.password:
            password = admin.password
        else:
            password = read_password(False, confirm=False)
        form = {
            "grant_type": "password",
            "username": args.username,
            "password": password,
            "client_id": client_id,
        }
        if args.scope:
            form["scope"] = args.scope
        response = post_form(f"{stack.front_url}/oauth2/token", form)
        if args.json:
            print(json.dumps(response, indent=2, sort_keys=True))
        else:
            print(response["access_token"])

    return report("macp login", body)


def post_form(url: str, form: dict[str, str]) -> dict[str, Any]:
    """POST an urlencoded form; the JSON answer, or CliError with the OAuth error it gave."""
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"content-type": "application/x-www-form-urlencoded", "accept": "application/json"},
        method="POST",
    )
    try:
        with _HTTP.open(request, timeout=TIMEOUT_SECONDS) as answer:
            document = _json(answer.read())
    except urllib.error.HTTPError as error:
        failure = _json(error.read())
        code = str(failure.get("error") or f"HTTP {error.code}")
        description = str(failure.get("error_description") or failure.get("message") or "").strip()
        raise CliError(f"{code}: {description}" if description else code) from None
    except (OSError, ValueError) as error:
        raise CliError(f"cannot reach {url}: {getattr(error, 'reason', error)}", EXIT_NOT_RUNNING) from None
    if "access_token" not in document:
        raise CliError(f"{url} answered without an access_token")
    return document


def _json(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


TOKEN_VARIABLE = "MACP_ACCESS_TOKEN"


def edge_token(stack: RunningStack, explicit: str | None) -> str:
    """The access token a command calls the edge with: `explicit` (`--token`), else
    `$MACP_ACCESS_TOKEN`, else the seeded local admin signed in with the password grant."""
    token = explicit or os.environ.get(TOKEN_VARIABLE, "")
    if token:
        return token
    admin = local_admin(stack)
    form = {
        "grant_type": "password",
        "username": admin.username,
        "password": admin.password,
        "client_id": admin.cli_client_id,
    }
    return str(post_form(f"{stack.front_url}/oauth2/token", form)["access_token"])
