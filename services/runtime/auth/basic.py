"""HTTP Basic client credentials (RFC 6749 2.3.1), as the edge reads them from a request and hands
them on to the token service in gRPC metadata (`authorization: Basic ...`).

The id and the secret are form-encoded before base64, so an id holding `:` survives the split; `+`
is kept as is rather than read as a space, since client ids may contain it and not every client
library encodes it.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote, unquote

SCHEME = "Basic"


def encode_basic(client_id: str, client_secret: str) -> str:
    """The `Authorization` value carrying these credentials."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
    return f"{SCHEME} {base64.b64encode(pair).decode('ascii')}"


def decode_basic(credentials: str) -> tuple[str, str] | None:
    """The client id and secret of the base64 part of a Basic value; None when it is not one."""
    try:
        decoded = base64.b64decode(credentials.encode("ascii"), validate=True).decode("utf-8")
        client_id, colon, secret = decoded.partition(":")
        if colon and client_id:
            return unquote(client_id, errors="strict"), unquote(secret, errors="strict")
    except (binascii.Error, UnicodeError):
        pass
    return None
