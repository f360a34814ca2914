"""What the MCP endpoint's token check reads before the transport does: the scope a JSON-RPC
message (or batch) needs, and where its RFC 9728 metadata lives (RFC 9728 section 3.1)."""

from __future__ import annotations

import json

from services.runtime.auth.settings import mcp_resource
from services.tool_gateway.resource_auth import ProtectedResource, required_scopes


def body(*messages: dict[str, object]) -> bytes:
    return json.dumps(messages[0] if len(messages) == 1 else list(messages)).encode()


def test_each_method_needs_its_scope_and_a_batch_needs_them_all() -> None:
    assert required_scopes(body({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})) == {"tools:read"}
    assert required_scopes(body({"jsonrpc": "2.0", "id": 1, "method": "tools/call"})) == {"tools:call"}
    assert required_scopes(
        body(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call"},
        )
    ) == {"tools:read", "tools:call"}
    # The handshake, discovery and notifications need a valid token only.
    for method in ("initialize", "server/discover", "ping", "notifications/initialized"):
        assert required_scopes(body({"jsonrpc": "2.0", "method": method})) == set()
    # What is not JSON-RPC is the transport's to refuse.
    assert required_scopes(b"not json") == set()
    assert required_scopes(b'{"method": 3}') == set()
    assert required_scopes(b"[[[]]]") == set()


def test_the_metadata_is_at_the_well_known_prefix_before_the_resources_path() -> None:
    resource = ProtectedResource(mcp_resource("https://api.example.com/"), "https://api.example.com/")
    assert resource.url == "https://api.example.com/mcp"
    assert resource.path == "/mcp"
    assert resource.metadata_path == "/.well-known/oauth-protected-resource/mcp"
    assert resource.metadata_url == "https://api.example.com/.well-known/oauth-protected-resource/mcp"
    assert resource.challenge(scope="tools:call") == (
        'Bearer resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/mcp", '
        'scope="tools:call"'
    )
