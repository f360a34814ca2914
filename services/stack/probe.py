"""Container healthchecks: `python -m services.stack.probe grpc HOST:PORT | http URL`.

Compose runs this inside each MACP container. It is a command-line face on the same probes
`macp up` uses (services/stack/probes.py), so a container is healthy exactly when the native stack
would call it ready: `grpc` passes only when grpc.health.v1 answers SERVING (a service reports
that once its dependencies answer, and NOT_SERVING while shutting down), `http` only on 200.
An open port proves nothing, and the image needs no extra probe binary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.stack.probes import ProbeError, grpc_serving, http_ok

DEFAULT_TIMEOUT_SECONDS = 3.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.stack.probe", description="Exit 0 only when the target is ready."
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    grpc_parser = kinds.add_parser("grpc", help="grpc.health.v1 Check; ready only on SERVING")
    grpc_parser.add_argument("address", help="host:port of the gRPC server")
    grpc_parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS)
    http_parser = kinds.add_parser("http", help="HTTP GET; ready only on 200")
    http_parser.add_argument("url")
    http_parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.kind == "grpc":
            grpc_serving(args.address, args.timeout)
        else:
            http_ok(args.url, args.timeout)
    except ProbeError as exc:
        # Docker keeps the last lines of a failing healthcheck; make them say why.
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
