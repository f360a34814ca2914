"""RFC 7591 dynamic client registration, behind the initial access token, and open for MCP clients
of the tenants that opted in (open_registration.py).

The metadata is checked against the client class (004's four kinds of client): only INTERNAL
clients hold privileged or service-held scopes or live in the system tenant, and only INTERNAL and
CONSUMER clients may use the password grant. The secret is returned once; only its hash is kept.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

from google.protobuf import json_format
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.token import scopes
from services.token.clients import CLIENT_CREDENTIALS, PASSWORD, TOKEN_EXCHANGE
from services.token.hashing import hash_client_secret, new_client_secret
from services.token.oauth import oauth_error
from services.token.open_registration import OPEN_REGISTRATION_SUBJECT, open_metadata, open_tenant
from services.token.redirects import check_redirect_uris
from services.token.store.directory import SYSTEM_TENANT, Client, DirectoryStore

CLASS_NAMES = {
    principal_pb2.CLIENT_CLASS_INTERNAL: "internal",
    principal_pb2.CLIENT_CLASS_CONSUMER: "consumer",
    principal_pb2.CLIENT_CLASS_PARTNER: "partner",
    principal_pb2.CLIENT_CLASS_THIRD_PARTY: "third_party",
}
PASSWORD_CLASSES = frozenset({"internal", "consumer"})
CONFIDENTIAL_ONLY_GRANTS = frozenset({CLIENT_CREDENTIALS, TOKEN_EXCHANGE})
SUPPORTED_AUTH_METHODS = frozenset({"none", "client_secret_basic", "client_secret_post"})
INITIAL_ACCESS_TOKEN_SUBJECT = "initial-access-token"


@dataclass(frozen=True)
class Registered:
    client: Client
    client_secret: str | None
    metadata: pb.ClientMetadata


class Registration:
    def __init__(
        self,
        directory: DirectoryStore,
        initial_access_token: str | None,
        open_tenants: tuple[str, ...] = (),
    ) -> None:
        self._directory = directory
        self._initial_access_token = initial_access_token
        self._open_tenants = open_tenants

    async def register(self, request: pb.RegisterClientRequest) -> Registered:
        if not request.initial_access_token and self._open_tenants:
            metadata = open_metadata(request.metadata)
            tenant_id = open_tenant(request.tenant_id, self._open_tenants)
            subject = OPEN_REGISTRATION_SUBJECT
        else:
            self._check_initial_access_token(request.initial_access_token)
            metadata = _with_defaults(request.metadata)
            tenant_id = request.tenant_id or SYSTEM_TENANT
            subject = INITIAL_ACCESS_TOKEN_SUBJECT
        class_name = CLASS_NAMES[metadata.client_class]
        allowed_scopes = scopes.parse(metadata.scope)
        _check_policy(metadata, class_name, tenant_id, allowed_scopes)
        check_redirect_uris(metadata.redirect_uris)
        if await self._directory.tenant(tenant_id) is None:
            raise oauth_error("invalid_client_metadata", f"tenant {tenant_id} does not exist")

        public = metadata.token_endpoint_auth_method == "none"
        secret = None if public else new_client_secret()
        client_id = str(uuid.uuid4())
        # The caller is known only as a holder of the initial access token (an operator), or as
        # anyone (open registration), so the audit row names that as its subject; the client
        # registered is its resource.
        audited = AuditEvent(
            Who(tenant_id=tenant_id, subject=subject),
            audit.CLIENT_REGISTER,
            f"client/{client_id}",
            detail={
                "client_class": class_name,
                "scope": " ".join(allowed_scopes),
                "grant_types": " ".join(metadata.grant_types),
            },
        )
        client = await self._directory.insert_client(
            Client(
                client_id=client_id,
                tenant_id=tenant_id,
                client_class=class_name,
                secret_hash=None if secret is None else hash_client_secret(secret),
                auth_method=metadata.token_endpoint_auth_method,
                grant_types=tuple(metadata.grant_types),
                scopes=allowed_scopes,
                metadata=json_format.MessageToDict(metadata, preserving_proto_field_name=True),
                create_time=datetime.now(UTC),
            ),
            audited,
        )
        return Registered(client, secret, metadata)

    def _check_initial_access_token(self, presented: str) -> None:
        if self._initial_access_token is None:
            raise oauth_error(
                "invalid_token",
                "client registration is closed: MACP_TOKEN_INITIAL_ACCESS_TOKEN is not set"
                + ("" if presented else " and no tenant takes open registrations"),
            )
        if not hmac.compare_digest(presented.encode(), self._initial_access_token.encode()):
            raise oauth_error("invalid_token", "registration needs a valid initial access token")


def _with_defaults(requested: pb.ClientMetadata) -> pb.ClientMetadata:
    """The metadata as it will be registered: RFC 7591 2's defaults, and THIRD_PARTY by default."""
    metadata = pb.ClientMetadata()
    metadata.CopyFrom(requested)
    if not metadata.token_endpoint_auth_method:
        metadata.token_endpoint_auth_method = "client_secret_basic"
    if not metadata.grant_types:
        metadata.grant_types.append("authorization_code")
    if not metadata.response_types and "authorization_code" in metadata.grant_types:
        metadata.response_types.append("code")
    if metadata.client_class == principal_pb2.CLIENT_CLASS_UNSPECIFIED:
        metadata.client_class = principal_pb2.CLIENT_CLASS_THIRD_PARTY
    metadata.scope = " ".join(scopes.parse(metadata.scope))
    return metadata


def _check_policy(
    metadata: pb.ClientMetadata, class_name: str, tenant_id: str, allowed_scopes: tuple[str, ...]
) -> None:
    def refuse(description: str) -> NoReturn:
        raise oauth_error("invalid_client_metadata", description)

    if metadata.software_statement:
        refuse("software statements are not accepted")
    if metadata.token_endpoint_auth_method not in SUPPORTED_AUTH_METHODS:
        refuse(f"token_endpoint_auth_method {metadata.token_endpoint_auth_method} is not supported")
    reserved = sorted(set(allowed_scopes) & (scopes.PRIVILEGED | scopes.SERVICE_HELD))
    if reserved and class_name != scopes.INTERNAL:
        refuse(f"only internal clients may hold {' '.join(reserved)}")
    if tenant_id == SYSTEM_TENANT and class_name != "internal":
        refuse(f"only internal clients belong to the system tenant; set tenant_id for a {class_name} client")
    if PASSWORD in metadata.grant_types and class_name not in PASSWORD_CLASSES:
        refuse(f"a {class_name} client may not use the password grant")
    if metadata.token_endpoint_auth_method == "none":
        confidential = sorted(CONFIDENTIAL_ONLY_GRANTS & set(metadata.grant_types))
        if confidential:
            refuse(f"a public client (auth method none) may not use {' '.join(confidential)}")
