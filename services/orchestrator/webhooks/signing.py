"""Standard Webhooks signatures (standardwebhooks.com): what a receiver checks.

`webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`, the
key being the secret's base64 after `whsec_`; the timestamp (unix seconds) is signed with the body
so a receiver refuses a replayed request by its age, and the id lets it de-duplicate retries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from services.runtime.webhook_secrets import SECRET_PREFIX


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, webhook_id, timestamp, body),
    }
