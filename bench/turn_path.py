"""`python -m bench.turn_path`: where a turn's time to first token goes, hop by hop.

The stack as bench.turn_cost runs it (each part its own process, as `macp up` runs them), with
tracing on: every process exports its spans over OTLP/HTTP to a receiver in this process. One
WebSocket client on Envoy's front listener sends `--turns` messages one after the other (one
agent, 20-token answers) and notes, on the machine's clock, when it sent each and when its first
`token_delta` arrived; the `ack` names the message's trace. For every span of those traces, in the
order they start, the report gives its median start and end relative to the sent frame, so the
path to the first token reads top to bottom, and what runs beside it shows as overlapping times.

Tracing costs time of its own (a span per hop, exported in the background), so the absolute times
are a little higher than bench.turn_cost's: read this for where the time goes, and bench.turn_cost
for how much it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import websockets
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bench.agent_proxy import PROMPT
from bench.orchestrator import TIMEOUT_SECONDS, Bench, new_conversations, running_parts
from bench.slice import book_behavior
from bench.stats import machine_line, markdown_table
from bench.turn_cost import AS_MACP_UP, TURN_MODEL, TURN_TOKENS

SERVICE_ATTRIBUTE = "macp.service"
# The span processors export every 50 ms (the OpenTelemetry default is 5 s).
EXPORT_EVERY_MS = "50"
SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class Span:
    trace_id: bytes
    name: str
    service: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class SentTurn:
    trace_id: bytes
    sent_ns: int
    first_token_ns: int


class SpanReceiver:
    """An OTLP/HTTP traces endpoint (protobuf) keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                return  # one line per export would drown the progress lines

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        found = []
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    service = attributes.get(SERVICE_ATTRIBUTE, "?")
                    found.append(
                        Span(
                            span.trace_id,
                            span.name,
                            service,
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                        )
                    )
        with self._lock:
            self.spans += found

    @contextmanager
    def serving(self) -> Iterator[SpanReceiver]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


async def sent_turns(bench: Bench, turns: int) -> list[SentTurn]:
    """`turns` messages one after the other on one WebSocket, the first left out (warm-up)."""
    [conversation_id] = await new_conversations(bench, 1, TURN_MODEL)
    done: list[SentTurn] = []
    async with websockets.connect(bench.ws_url, max_size=None, open_timeout=TIMEOUT_SECONDS) as ws:
        await ws.send(json.dumps({"action": "subscribe", "conversation_id": conversation_id}))
        for _ in range(turns + 1):
            message_id = str(uuid.uuid4())
            sent = time.time_ns()
            frame = {"action": "message", "conversation_id": conversation_id, "message_id": message_id}
            await ws.send(json.dumps({**frame, "text": PROMPT}))
            trace_id, first = b"", 0
            async with asyncio.timeout(TIMEOUT_SECONDS):
                while True:
                    event = json.loads(await ws.recv())
                    kind = event.get("kind")
                    if event.get("type") == "ack" and event.get("message_id") == message_id:
                        trace_id = bytes.fromhex(event["traceparent"].split("-")[1])
                    elif kind == "token_delta" and not first:
                        first = time.time_ns()
                    elif kind == "round_completed":
                        break
            done.append(SentTurn(trace_id, sent, first))
    return done[1:]


def path_table(turns: Sequence[SentTurn], spans: Sequence[Span]) -> str:
    """Each span (the nth of its name in its trace) with its median start and end in ms after the
    frame was sent, in the order they start; the first token's arrival among them."""
    by_trace: dict[bytes, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    starts: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    ends: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for turn in turns:
        seen: dict[tuple[str, str], int] = defaultdict(int)
        for span in sorted(by_trace.get(turn.trace_id, []), key=lambda s: s.start_ns):
            nth = seen[(span.service, span.name)]
            seen[(span.service, span.name)] += 1
            key = (span.service, span.name, nth)
            starts[key].append((span.start_ns - turn.sent_ns) / 1e6)
            ends[key].append((span.end_ns - turn.sent_ns) / 1e6)
    first_token = statistics.median((t.first_token_ns - t.sent_ns) / 1e6 for t in turns)
    # Spans in most traces only: a token refresh or a cache miss now and then is not the path.
    keys = [key for key in starts if len(starts[key]) >= len(turns) / 2]
    rows = [(statistics.median(starts[key]), statistics.median(ends[key]), key) for key in keys]
    rows.append((first_token, first_token, ("client", "first token_delta arrives", 0)))
    lines = []
    for start, end, (service, name, nth) in sorted(rows):
        label = f"{name} ({nth + 1})" if nth else name
        span_ms = "" if service == "client" else f"{end - start:.1f}"
        lines.append([service, label, f"{start:.1f}", f"{end:.1f}", span_ms])
    return markdown_table(["service", "span", "start ms", "end ms", "takes ms"], lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_path", description=__doc__)
    parser.add_argument("--turns", type=int, default=100, help="timed turns, one after the other")
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error("--turns: expected a positive number of turns")

    def say(line: str) -> None:
        print(f"# {line}", file=sys.stderr, flush=True)

    receiver = SpanReceiver()
    with receiver.serving():
        overrides = AS_MACP_UP | {
            "MACP_TRACES_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": EXPORT_EVERY_MS,
        }
        with running_parts(say, kafka_storage="s3", overrides=overrides) as bench:
            book_behavior(bench.provider_url, TURN_MODEL, f"tokens={TURN_TOKENS}")
            say(f"{args.turns} turns at one in flight")
            turns = asyncio.run(sent_turns(bench, args.turns))
            time.sleep(SETTLE_SECONDS)  # the last spans' export
    print(machine_line())
    print(f"\nMedians over {len(turns)} turns, ms after the client sent its message frame:\n")
    print(path_table(turns, receiver.spans))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
