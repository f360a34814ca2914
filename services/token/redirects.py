"""Which redirect URIs a client may register (RFC 9700 2.1 and 4.1, OAuth 2.1 2.3, RFC 8252 7).

A redirect URI is where an authorization code (and, with it, the user's session) is sent, so it is
compared exactly at sign-in and must name one place the client controls:
- `https` with a host;
- `http` only on the loopback interface (`127.0.0.1`, `[::1]`, `localhost`), for native apps and
  development (RFC 8252 7.3), any port;
- a native app's private-use scheme in reverse domain name form (`com.example.app:/callback`,
  RFC 8252 7.1), which is what the period in it proves;
and never a fragment (RFC 6749 3.1.2), a wildcard, user credentials, or a scheme a browser runs or
reads locally (`javascript:`, `data:`, `file:`, ...), which would hand the code to a script.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

from services.token.oauth import oauth_error

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# Schemes a browser executes or reads from the machine rather than sending a request somewhere.
DANGEROUS_SCHEMES = frozenset(
    {"javascript", "vbscript", "data", "file", "blob", "filesystem", "about", "view-source", "jar"}
)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def check_redirect_uris(uris: Iterable[str]) -> None:
    """invalid_redirect_uri (RFC 7591 3.2.2) naming the first URI that may not be registered."""
    for uri in uris:
        problem = _problem(uri)
        if problem is not None:
            raise oauth_error("invalid_redirect_uri", f"{uri!r}: {problem}")


def _problem(uri: str) -> str | None:
    if "#" in uri:
        return "a redirect URI has no fragment"
    if "*" in uri:
        return "a redirect URI is compared exactly: no wildcards"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  # raises ValueError for a port that is not one
    except ValueError as exc:
        return f"not a valid URI ({exc})"
    scheme = parts.scheme.lower()
    if not _SCHEME.fullmatch(scheme):
        return "an absolute URI with a scheme is required"
    if scheme in DANGEROUS_SCHEMES:
        return f"the {scheme}: scheme is never a redirect target"
    if scheme == "https":
        return _web(parts)
    if scheme == "http":
        problem = _web(parts)
        if problem is None and parts.hostname not in LOOPBACK_HOSTS:
            return "plain http only on the loopback interface (127.0.0.1, [::1], localhost); use https"
        return problem
    if "." not in scheme:
        return (
            "use https, http on the loopback interface, or a private-use scheme in reverse domain "
            "name form (com.example.app:/callback)"
        )
    return None


def _web(parts: SplitResult) -> str | None:
    if not parts.hostname:
        return "an http(s) redirect URI names its host"
    if parts.username is not None or parts.password is not None:
        return "a redirect URI carries no user credentials"
    return None
