"""Every service's JSON log line goes out with credential values replaced, whoever logged them."""

from __future__ import annotations

import json
import logging

import pytest

from services.runtime.logs import REDACTED, JsonFormatter, redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl-_x"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"GET /v1/ws?access_token={JWT}", JWT),
        (f"a token {JWT} in an exception's text", JWT),
        ("authorization: Bearer opaque-token-value", "opaque-token-value"),
        ("Basic dXNlcjpzZWNyZXQ=", "dXNlcjpzZWNyZXQ="),
        ("grant_type=password&password=hunter2&client_secret=s3cr3t", "hunter2"),
        ("grant_type=password&password=hunter2&client_secret=s3cr3t", "s3cr3t"),
        ('{"refresh_token": "rt-1234"}', "rt-1234"),
        ('{\\"client_secret\\": \\"escaped-secret\\"}', "escaped-secret"),
        ("/callback?state=xyz&code=auth-code-123", "auth-code-123"),
    ],
)
def test_credential_values_are_redacted(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert REDACTED in redacted


def test_error_codes_and_other_fields_are_left_alone() -> None:
    text = '{"code": "INVALID_JSON", "status_code": 400, "grant_type": "password"}'
    assert redact(text) == text


def test_the_formatter_redacts_the_message_and_every_extra_field() -> None:
    record = logging.LogRecord("macp.test", logging.INFO, __file__, 1, "refused %s", (JWT,), None)
    record.path = f"/v1/ws?access_token={JWT}"
    line = JsonFormatter("edge").format(record)
    assert JWT not in line
    assert json.loads(line)["message"] == f"refused {REDACTED}"
