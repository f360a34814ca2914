"""The web console's static files at `/console/`: the build of `console/` (`npm run build:console`).

The console is a single-page app that signs in by itself (authorization code + PKCE against this
edge's `/oauth2/` endpoints), so its files are public: this is a plain ASGI layer outside the
edge's authentication, source-address limits and readiness, which would otherwise ask a token of a
page that has none yet, count every asset of a page load as an unauthenticated request, and hide
the page that can say the platform is not ready. Its paths are no API route, so they are not in the
OpenAPI document.

- `/console` redirects to `/console/`; `/console/` is `index.html`.
- `/console/<path>` is that file of the build; a path whose last segment has no extension is a
  route of the app (`/console/conversations/<id>`) and gets `index.html`, whose script reads the
  location. A missing file with an extension is a 404.
- Vite names its assets by their content hash (`/console/assets/index-3f2a9c.js`): they never
  change, so they are cached for a year; `index.html` is revalidated every time, so a new build
  is seen at once.
- Every answer carries a Content-Security-Policy that allows only this origin's scripts, styles
  and connections (WebSockets included) and no framing, with `nosniff` and no referrer (the URL of
  a conversation is nobody else's business).
- A path that leaves the build directory (`..`, an absolute or encoded one, a symlink out) is
  refused with 404; a build directory without `index.html` answers 503 saying how to build it.
"""

from __future__ import annotations

import mimetypes
import posixpath
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

from starlette.datastructures import Headers
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

PREFIX = "/console"
# The repository's build output (`vite build`, console/vite.config.ts); MACP_EDGE_CONSOLE_DIR elsewhere.
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "console" / "dist"
INDEX = "index.html"
# Vite's content-hashed output directory (console/vite.config.ts `build.assetsDir`).
ASSETS = "assets/"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "connect-src 'self' ws: wss:",
        "img-src 'self' data:",
        # Inline style attributes: the charts and the bid bars size their elements with them.
        "style-src 'self' 'unsafe-inline'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
NOT_BUILT = (
    "The console is not built: run `npm ci && npm run build:console` in the repository "
    "(./dev up does it), or point MACP_EDGE_CONSOLE_DIR at a build.\n"
)

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("image/svg+xml", ".svg")
mimetypes.add_type("font/woff2", ".woff2")


def is_console_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class ConsoleFiles:
    """Serves `/console` from `directory`; passes every other request on to `app`."""

    def __init__(self, app: ASGIApp, directory: Path) -> None:
        self._app = app
        self._directory = directory.resolve()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_console_path(scope.get("path", "")):
            await self._app(scope, receive, send)
            return
        response = self.respond(scope["method"], scope["path"], Headers(scope=scope))
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        await response(scope, receive, send)

    def respond(self, method: str, path: str, headers: Headers) -> Response:
        if method not in ("GET", "HEAD"):
            return PlainTextResponse(
                f"{method} is not allowed on {path}\n",
                HTTPStatus.METHOD_NOT_ALLOWED,
                headers={"allow": "GET, HEAD"},
            )
        if path == PREFIX:
            return RedirectResponse(PREFIX + "/", HTTPStatus.MOVED_PERMANENTLY)
        index = self._directory / INDEX
        if not index.is_file():
            unavailable = HTTPStatus.SERVICE_UNAVAILABLE
            return PlainTextResponse(NOT_BUILT, unavailable, headers={"cache-control": "no-store"})
        relative = self._relative(path)
        if relative is None:
            return _not_found(path)
        if relative == "" or "." not in posixpath.basename(relative):
            return self._file(index, REVALIDATE, headers)
        target = (self._directory / relative).resolve()
        if not target.is_relative_to(self._directory) or not target.is_file():
            return _not_found(path)
        cache = IMMUTABLE if relative.startswith(ASSETS) else REVALIDATE
        return self._file(target, cache, headers)

    @staticmethod
    def _relative(path: str) -> str | None:
        """The path inside the build, or None for one that would leave it (or is not plain)."""
        rest = unquote(path[len(PREFIX) + 1 :])
        if "\\" in rest or "\x00" in rest or rest.startswith("/"):
            return None
        parts = rest.split("/")
        if any(part in ("..", ".") for part in parts) or any(part == "" for part in parts[:-1]):
            return None
        return rest

    @staticmethod
    def _file(target: Path, cache: str, headers: Headers) -> Response:
        media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type == "application/json":
            media_type += "; charset=utf-8"
        response = FileResponse(
            target, media_type=media_type, headers={"cache-control": cache}, stat_result=target.stat()
        )
        if cache == IMMUTABLE:
            return response
        # A revalidated file answers 304 to the etag the browser already has.
        etag = response.headers["etag"]
        if headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"cache-control": cache, "etag": etag})
        return response


def _not_found(path: str) -> Response:
    return PlainTextResponse(f"no console file at {path}\n", HTTPStatus.NOT_FOUND)
