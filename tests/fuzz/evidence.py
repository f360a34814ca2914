"""What a case leaves behind besides its answer: the error records the in-process services logged
while it ran (their tracebacks), and Envoy's access-log line for its request id (the response
flags say whether Envoy or the edge answered a 5xx, and why)."""

from __future__ import annotations

import json
import logging
import traceback
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.runtime.context import current_request_id

# A case's tracebacks are cut to this many characters each: the last frames say where it broke.
TRACEBACK_CHARS = 1_500


class ErrorRecords(logging.Handler):
    """Error records (and warnings with an exception) of every in-process service, by the request
    id they were logged under; those logged outside any request go to the case running then."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.by_request: defaultdict[str, list[str]] = defaultdict(list)
        self.current = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR and not record.exc_info:
            return
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            formatted = "".join(traceback.format_exception(*record.exc_info))
            text += "\n" + formatted[-TRACEBACK_CHARS:]
        request_id = current_request_id() or getattr(record, "request_id", None) or self.current
        self.by_request[str(request_id)].append(text)

    def of(self, request_id: str) -> list[str]:
        return list(self.by_request.get(request_id, ()))


@contextmanager
def capturing_errors() -> Iterator[ErrorRecords]:
    """ErrorRecords on the root logger until the block ends (installed after the services started:
    each service's start replaces the root logger's handlers)."""
    handler = ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def envoy_lines(log_dir: Path, request_id: str) -> list[str]:
    """Envoy's access-log lines (front and mesh listeners) of `request_id`, shortened to the fields
    that explain an answer."""
    lines: list[str] = []
    for path in sorted(log_dir.glob("**/envoy*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if request_id not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                lines.append(line[:300])
                continue
            keep = (
                "listener",
                "method",
                "path",
                "status",
                "response_flags",
                "grpc_status",
                "upstream_cluster",
            )
            lines.append(json.dumps({key: entry.get(key) for key in keep if key in entry}))
    return lines
