"""JSON logs, one object per line, each carrying the request id of the call it belongs to."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from services.runtime.context import current_request_id

# Attributes every LogRecord has; anything else passed via `extra=` is emitted as a JSON field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


# Credentials that must never reach a log line, whoever logs them (ours, grpc's, a library's
# exception text): a JWT anywhere; the value after `Bearer`/`Basic`; the value of a credential-named
# key in `key=value` (query strings, forms) or JSON (`"key": "value"`) form. `code` only in
# query or form encoding (after `?` or `&`): as a JSON key it is the error code of every refusal.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+")
_NAMED = re.compile(
    r"(?i)((?<![A-Za-z0-9_])(?:access_token|refresh_token|id_token|client_secret|password|"
    r"subject_token|actor_token|authorization|initial_access_token)|[?&]code)"
    r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)([^\"'&\s,;}\\]+)"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """`text` with every credential value it carries replaced by `[redacted]`."""
    if "ey" in text:
        text = _JWT.sub(REDACTED, text)
    text = _SCHEME.sub(rf"\1\2{REDACTED}", text)
    return _NAMED.sub(rf"\1\2{REDACTED}", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def configure_logging(service: str, level: str) -> None:
    """Route every logger (ours, grpc's, asyncpg's) to JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter at INFO drowns the access log; keep it at WARNING.
    for noisy in ("aiokafka", "botocore", "urllib3", "asyncio", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
