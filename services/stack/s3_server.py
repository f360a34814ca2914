"""moto's S3 server made durable: `python -m services.stack.s3_server --port P --state-file F`.

moto 5 (5.2.5 here) keeps every backend in memory and has no persistence option: its "recorder"
(MOTO_ENABLE_RECORDING) only logs requests for a later replay, a log that grows without bound
and replays every delete and conditional write. So this wrapper runs moto's own WSGI app
and snapshots the S3 backend's buckets (moto's objects pickle by design: FakeKey defines
__getstate__) to one file: restored at start, written every few seconds after a change and once
more on SIGTERM/SIGINT. Objects, metadata, versions and multipart uploads survive a restart; at
most the last save interval of writes is lost if the process is killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

SNAPSHOT_VERSION = 1
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class S3Snapshots:
    """Saves and restores moto's S3 state; a lock keeps snapshots consistent with writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.dirty = False

    def restore(self) -> int:
        """Load the snapshot into moto's S3 backend; the number of buckets restored."""
        from moto.s3.models import s3_backends

        if not self.path.exists():
            return 0
        # The file is our own, in our own data dir: unpickling it trusts nothing from outside.
        state = pickle.loads(self.path.read_bytes())
        if state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown snapshot version {state.get('version')!r}")
        restored = 0
        for (account_id, partition), buckets in state["buckets"].items():
            s3_backends[account_id][partition].buckets.update(buckets)
            restored += len(buckets)
        s3_backends.bucket_accounts.update(state["bucket_accounts"])
        return restored

    def save(self) -> None:
        """Write the state if it changed since the last save (atomically: a crash keeps the old file)."""
        from moto.s3.models import s3_backends

        with self.lock:
            if not self.dirty:
                return
            buckets: dict[tuple[str, str], dict[str, Any]] = {}
            # dict.items, not the mapping's own accessors: those create backends as a side effect.
            for account_id, account_backends in dict.items(s3_backends):
                for partition, backend in dict.items(account_backends):
                    if backend.buckets:
                        buckets[(account_id, partition)] = dict(backend.buckets)
            state = {
                "version": SNAPSHOT_VERSION,
                "buckets": buckets,
                "bucket_accounts": dict(s3_backends.bucket_accounts),
            }
            data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
            self.dirty = False
        scratch = self.path.with_suffix(".tmp")
        with scratch.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        scratch.replace(self.path)

    def tracking(self, app: WSGIApplication) -> WSGIApplication:
        """Wrap app so that writes run one at a time under the lock and mark the state dirty."""

        def wrapped(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("REQUEST_METHOD", "GET") in _READ_METHODS:
                return app(environ, start_response)
            # moto changes its state while handling the call, before the body is streamed back.
            with self.lock:
                result = app(environ, start_response)
                self.dirty = True
            return result

        return wrapped


def serve(host: str, port: int, snapshots: S3Snapshots, save_interval: float) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    # One log line per request would drown the log (the Kafka broker stores its log here).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = snapshots.tracking(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serving = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    serving.start()
    print(f"S3 server (moto) listening on http://{host}:{port}; state in {snapshots.path}", flush=True)
    interval = save_interval
    try:
        while not stopping.wait(interval):
            began = time.monotonic()
            snapshots.save()
            # Each save writes the whole state; as it grows, save less often so that saving never
            # takes more than about a tenth of the time (the Kafka broker may store a lot here).
            interval = max(save_interval, 10 * (time.monotonic() - began))
    finally:
        server.shutdown()
        snapshots.save()
        print("S3 state saved; stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack.s3_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument(
        "--save-interval", type=float, default=2.0, help="seconds between saves of a changed state"
    )
    args = parser.parse_args(argv)
    # The S3 endpoint is an IP address; take bucket names from the path, never from the Host header.
    os.environ.setdefault("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
    snapshots = S3Snapshots(args.state_file)
    args.state_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        restored = snapshots.restore()
    except Exception as exc:  # any unreadable snapshot gets the same one-line answer
        print(
            f"cannot restore S3 state from {args.state_file} ({type(exc).__name__}: {exc}); "
            "move that file away to start with an empty S3",
            file=sys.stderr,
        )
        return 1
    print(f"restored {restored} bucket(s) from {args.state_file}", flush=True)
    serve(args.host, args.port, snapshots, args.save_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
