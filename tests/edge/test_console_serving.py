"""The console's static files through the edge's whole ASGI stack (services/edge/console.py): no
token asked, the app's routes answered with index.html, hashed assets cached for good and the page
revalidated, the security headers on every answer, nothing outside the build, and a missing build
said in words. A build directory of the test's own: no real `vite build` needed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from starlette.types import Message

from services.edge import console
from services.edge.app import build_app
from services.edge.settings import EdgeSettings
from services.runtime.metrics import HttpMetrics
from services.runtime.settings import Env

INDEX = (
    "<!doctype html><title>MACP console</title>"
    "<script type=module src=/console/assets/index-abc123.js></script>"
)
SCRIPT = "console.log('hashed asset')"
# The least environment the edge's settings take (nothing is connected to it here).
ENVIRON = {"MACP_REDIS_URL": "redis://127.0.0.1:1/0"}


@pytest.fixture
def build(tmp_path: Path) -> Path:
    directory = tmp_path / "dist"
    (directory / "assets").mkdir(parents=True)
    (directory / "index.html").write_text(INDEX)
    (directory / "assets" / "index-abc123.js").write_text(SCRIPT)
    (directory / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "secret.txt").write_text("outside the build")
    return directory


async def _client(directory: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = EdgeSettings.from_env(Env({**ENVIRON, "MACP_EDGE_CONSOLE_DIR": str(directory)}))
    app = build_app(settings, HttpMetrics("edge"))
    # No lifespan: the edge's context (Redis, the mesh) is never opened, so any request that got
    # past the console layer to authentication or readiness would fail loudly.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as client:
        yield client


@pytest.fixture
async def client(build: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for each in _client(build):
        yield each


def _secure(response: httpx.Response) -> None:
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "connect-src 'self' ws: wss:" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_the_setting_defaults_to_the_repository_build() -> None:
    assert EdgeSettings.from_env(Env(ENVIRON)).console_dir == console.DEFAULT_DIR
    assert console.DEFAULT_DIR.parts[-2:] == ("console", "dist")


async def test_bare_prefix_redirects_to_the_app(client: httpx.AsyncClient) -> None:
    response = await client.get("/console")
    assert response.status_code == 301
    assert response.headers["location"] == "/console/"
    _secure(response)


async def test_index_is_served_without_a_token_and_revalidated(client: httpx.AsyncClient) -> None:
    response = await client.get("/console/")
    assert response.status_code == 200, response.text
    assert response.text == INDEX
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    _secure(response)
    again = await client.get("/console/", headers={"if-none-match": response.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


async def test_hashed_asset_is_immutable(client: httpx.AsyncClient) -> None:
    response = await client.get("/console/assets/index-abc123.js")
    assert response.status_code == 200
    assert response.text == SCRIPT
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    _secure(response)
    other = await client.get("/console/favicon.svg")
    assert other.status_code == 200
    assert other.headers["content-type"] == "image/svg+xml"
    assert other.headers["cache-control"] == "no-cache"  # not hashed: revalidated


@pytest.mark.parametrize(
    "path",
    ["/console/conversations/0b5e2a3c-8d8f-4b35-9a8e-6e3f5f1d0001", "/console/agents", "/console/callback"],
)
async def test_app_routes_fall_back_to_index(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, params={"code": "x", "state": "y"})
    assert response.status_code == 200
    assert response.text == INDEX
    assert response.headers["cache-control"] == "no-cache"


async def test_a_missing_file_with_an_extension_is_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/console/assets/index-gone.js")
    assert response.status_code == 404
    assert "/console/assets/index-gone.js" in response.text
    _secure(response)


@pytest.mark.parametrize(
    "path",
    [
        "/console/../secret.txt",
        "/console/%2e%2e/secret.txt",
        "/console/assets/%2e%2e/%2e%2e/secret.txt",
        "/console/assets/..%2f..%2fsecret.txt",
        "/console/%2fetc%2fpasswd.txt",
        "/console/assets/..%5c..%5csecret.txt",
        "/console//etc/hostname.txt",
    ],
)
async def test_traversal_is_refused(build: Path, path: str) -> None:
    # Sent as the ASGI server passes it (httpx would normalise `..` before sending).
    status, body = await _raw_get(build, path)
    assert status == 404, (path, status)
    assert b"outside the build" not in body


async def _raw_get(directory: Path, raw_path: str) -> tuple[int, bytes]:
    settings = EdgeSettings.from_env(Env({**ENVIRON, "MACP_EDGE_CONSOLE_DIR": str(directory)}))
    app = build_app(settings, HttpMetrics("edge"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"edge.test")],
        "client": ("127.0.0.1", 1),
        "server": ("edge.test", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


async def test_a_symlink_out_of_the_build_is_refused(build: Path, client: httpx.AsyncClient) -> None:
    (build / "assets" / "leak.txt").symlink_to(build.parent / "secret.txt")
    response = await client.get("/console/assets/leak.txt")
    assert response.status_code == 404
    assert "outside the build" not in response.text


async def test_other_methods_are_not_allowed(client: httpx.AsyncClient) -> None:
    response = await client.post("/console/", content=b"x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_head_has_no_body(client: httpx.AsyncClient) -> None:
    response = await client.head("/console/assets/index-abc123.js")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) == len(SCRIPT)


async def test_a_missing_build_says_how_to_build_it(tmp_path: Path) -> None:
    async for client in _client(tmp_path / "never-built"):
        for path in ("/console/", "/console/agents", "/console/assets/index-abc123.js"):
            response = await client.get(path)
            assert response.status_code == 503
            assert "npm run build:console" in response.text
            assert response.headers["cache-control"] == "no-store"
            _secure(response)


async def test_other_paths_still_need_a_token(client: httpx.AsyncClient) -> None:
    # The console layer passes everything else on: a path that merely starts like it is an API
    # path, and is refused as one (here by readiness or authentication, never served as a file).
    response = await client.get("/consoleX/index.html")
    assert response.status_code != 200
    assert console.is_console_path("/console/x")
    assert not console.is_console_path("/consoleX")
