"""One case of the fuzz suite, whole, to send again by hand: `python -m tests.fuzz '<case id>'`
(the id a failure names, as in `POST /v1/agents | name=deep-array-100000`).

It prints the request line, the headers the case sets and the body's length, then writes the body
(or the WebSocket frame) byte for byte to the file named by `--out`. Slots written as UUIDs or
`@name@` stand for the attacker's own ids and credentials (tests/fuzz/targets.py): replace them with
real ones of the stack under test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.fuzz.catalog import HTTP_CASES, WS_CASES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("case", help="the case id a failure names")
    parser.add_argument("--out", type=Path, help="where to write the body or frame")
    args = parser.parse_args(argv)
    http = {case.id: case for case in HTTP_CASES}
    frames = {case.id: case for case in WS_CASES}
    data: bytes
    if args.case in http:
        case = http[args.case]
        query = f"?{case.query}" if case.query else ""
        print(f"{case.method} {case.path}{query}")
        print(f"credential: {case.credential}")
        if case.content_type is not None:
            print(f"content-type: {case.content_type}")
        for name, value in case.headers:
            print(f"{name}: {value!r}")
        data = case.body or b""
    elif args.case in frames:
        frame = frames[args.case]
        print(f"WebSocket /v1/ws, a {'binary' if frame.binary else 'text'} frame")
        for name, value in frame.handshake:
            print(f"handshake {name}: {value!r}")
        data = frame.data.encode() if isinstance(frame.data, str) else frame.data
    else:
        print(f"no case {args.case!r}", file=sys.stderr)
        return 2
    print(f"body: {len(data)} bytes")
    if args.out is not None:
        args.out.write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
