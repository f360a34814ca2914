"""Redirect URIs at registration (RFC 9700, OAuth 2.1, RFC 8252): https, http on loopback only, or a
native app's reverse-domain private-use scheme; no fragment, wildcard or dangerous scheme."""

from __future__ import annotations

import grpc
import pytest
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from tests.token.harness import TokenHarness, rpc_error

pytestmark = pytest.mark.integration

REFUSED = {
    "javascript:alert(document.cookie)": "javascript: scheme",
    "data:text/html;base64,PHNjcmlwdD4=": "data: scheme",
    "file:///etc/passwd": "file: scheme",
    "https://app.example/callback#fragment": "no fragment",
    "http://app.example/callback": "loopback",
    "http://10.0.0.7/callback": "loopback",
    "https://*.app.example/callback": "no wildcards",
    "https://app.example/*": "no wildcards",
    "https://user:secret@app.example/callback": "no user credentials",
    "myapp:/callback": "reverse domain name",
}
ACCEPTED = [
    "https://app.example/callback",
    "https://app.example:8443/oauth/callback?tenant=acme",
    "http://127.0.0.1:49152/callback",
    "http://[::1]/callback",
    "http://localhost:8080/callback",
    "com.example.app:/oauth2redirect",
]


def _registration(token_service: TokenHarness, redirect_uris: list[str]) -> pb.RegisterClientRequest:
    return pb.RegisterClientRequest(
        initial_access_token=token_service.initial_access_token,
        tenant_id="acme",
        metadata=pb.ClientMetadata(
            client_name="browser app",
            client_class=principal_pb2.CLIENT_CLASS_THIRD_PARTY,
            redirect_uris=redirect_uris,
        ),
    )


async def test_unsafe_redirect_uris_are_refused(token_service: TokenHarness) -> None:
    await token_service.tenant("acme")
    for uri, problem in REFUSED.items():
        # One unsafe URI among safe ones refuses the whole registration.
        request = _registration(token_service, ["https://app.example/callback", uri])
        refused = await rpc_error(token_service.stub.RegisterClient(request))
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, uri
        assert refused.details.startswith("invalid_redirect_uri: "), (uri, refused.details)
        assert problem in refused.details, (uri, refused.details)
    assert await token_service.db.fetchval("SELECT count(*) FROM token_clients WHERE tenant_id = 'acme'") == 0


async def test_safe_redirect_uris_are_registered(token_service: TokenHarness) -> None:
    await token_service.tenant("acme")
    registered = await token_service.stub.RegisterClient(_registration(token_service, ACCEPTED))
    assert list(registered.metadata.redirect_uris) == ACCEPTED
