"""The sign-in page of the authorization endpoint, and the pages it shows instead when it must not
redirect: server-rendered HTML that needs no JavaScript and no outside asset.

Every value shown is escaped; the headers forbid framing (clickjacking a password form), caching,
referrers (the page's URL carries the request) and any script; the one inline stylesheet is
allowed by its hash. `form-action` names the page's own origin and the client's redirect URI's:
browsers apply it to the redirect that follows the form's POST.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1b1d21}"
    "main{max-width:24rem;margin:3rem auto;padding:2rem;background:#fff;border-radius:8px;"
    "box-shadow:0 1px 4px rgba(0,0,0,.15)}"
    "h1{font-size:1.5rem;margin:0 0 .5rem}"
    "label{display:block;margin:1rem 0 .25rem;font-weight:600}"
    "input{width:100%;box-sizing:border-box;padding:.6rem;font-size:1rem;border:1px solid #6b7280;"
    "border-radius:4px}"
    "input:focus,button:focus{outline:3px solid #1d4ed8;outline-offset:2px}"
    "button{margin-top:1.5rem;width:100%;padding:.7rem;font-size:1rem;background:#1d4ed8;color:#fff;"
    "border:0;border-radius:4px;cursor:pointer}"
    "[role=alert]{margin:1rem 0;padding:.75rem;border-left:4px solid #b91c1c;background:#fef2f2;"
    "color:#7f1d1d}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

# Where a redirect URI may send the browser, as a CSP source: an http(s) origin or a private scheme.
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:")


def _csp_source(redirect_uri: str) -> str:
    parts = urlsplit(redirect_uri)
    if parts.scheme in ("http", "https"):
        origin = f"{parts.scheme}://{parts.netloc}"
        return origin if _ORIGIN.fullmatch(origin) else ""
    scheme = f"{parts.scheme}:"
    return scheme if _SCHEME.fullmatch(scheme) else ""


def security_headers(redirect_uri: str = "") -> dict[str, str]:
    """The headers of every answer of the authorization endpoint (pages and redirects alike)."""
    targets = " ".join(filter(None, ("'self'", _csp_source(redirect_uri) if redirect_uri else "")))
    policy = (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action {targets}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "content-security-policy": policy,
        "x-frame-options": "DENY",
        "cache-control": "no-store",
        "pragma": "no-cache",
        # Not no-referrer: under it a browser sends the form's POST with `Origin: null`, which the
        # cross-site check must refuse. same-origin still sends nothing to any other site.
        "referrer-policy": "same-origin",
        "x-content-type-options": "nosniff",
    }


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _alert(message: str) -> str:
    return f'<div role="alert" id="error">{html.escape(message)}</div>' if message else ""


@dataclass(frozen=True)
class SignInForm:
    """What the sign-in page shows: the request's parameters (posted back as hidden fields), the
    client's name, the CSRF token, the username typed before and the error to announce."""

    hidden: Mapping[str, Iterable[str]]
    client_name: str
    csrf_token: str
    redirect_uri: str
    username: str = ""
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def sign_in_page(form: SignInForm, status: int = 200) -> HTMLResponse:
    hidden = "\n".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, values in form.hidden.items()
        for value in values
    )
    body = (
        "<h1>Sign in to MACP</h1>\n"
        f"<p>to continue to <strong>{html.escape(form.client_name)}</strong></p>\n"
        f"{_alert(form.error)}\n"
        '<form method="post" action="/oauth2/authorize">\n'
        f"{hidden}\n"
        f'<input type="hidden" name="csrf_token" value="{html.escape(form.csrf_token)}">\n'
        '<label for="username">Username</label>\n'
        '<input id="username" name="username" type="text" autocomplete="username" autocapitalize="none" '
        f'spellcheck="false" required value="{html.escape(form.username)}"'
        f"{'' if form.username else ' autofocus'}>\n"
        '<label for="password">Password</label>\n'
        '<input id="password" name="password" type="password" autocomplete="current-password" required'
        f"{' autofocus' if form.username else ''}>\n"
        '<button type="submit">Sign in</button>\n'
        "</form>"
    )
    headers = {**security_headers(form.redirect_uri), **form.headers}
    return HTMLResponse(_document("Sign in to MACP", body), status_code=status, headers=headers)


def error_page(
    title: str, message: str, status: int, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """A refusal shown to the user, never a redirect (no redirect URI is trusted here)."""
    advice = "<p>Go back to the application and sign in again.</p>"
    body = f"<h1>{html.escape(title)}</h1>\n{_alert(message)}\n{advice}"
    return HTMLResponse(
        _document(title, body), status_code=status, headers={**security_headers(), **(headers or {})}
    )


def redirect_page(location: str, redirect_uri: str) -> HTMLResponse:
    """The 303 to the client: a body too, naming where it goes, for the rare client not following it."""
    body = f'<h1>Returning to the application</h1>\n<p><a href="{html.escape(location)}">Continue</a></p>'
    headers = {**security_headers(redirect_uri), "location": location}
    return HTMLResponse(_document("Redirecting", body), status_code=303, headers=headers)
