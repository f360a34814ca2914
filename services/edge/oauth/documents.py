"""The bodies of the OAuth endpoints as the RFCs spell them, and their JSON Schemas for the OpenAPI document.

The token contract names its fields after the RFCs, so a message's fields become an RFC document one
to one: proto field names (not the proto3 JSON mapping's lowerCamelCase), numbers as JSON numbers (not
the mapping's strings for 64-bit integers), enums by name, and unset fields left out. `rfc_fields`
renders a message that way and `rfc_schema` describes the result, so the two cannot disagree.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from macp.token.v1 import token_service_pb2 as token_pb

from services.edge.routes import Content, descriptor_of
from services.edge.schema import JsonSchema
from services.runtime.auth.jwt import ALGORITHM
from services.runtime.auth.settings import USER_SCOPES

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

# The grant types /oauth2/token accepts, in the order the metadata document lists them.
GRANT_TYPES = ("authorization_code", "client_credentials", "password", "refresh_token", TOKEN_EXCHANGE)

# OpenID Connect (Core 3.1.2.1): asks the authorization code grant for an ID token too.
OPENID = "openid"
# The longest `nonce` an authorization request may send (AuthorizeRequest.nonce in the proto).
MAX_NONCE_LENGTH = 512
# The claims an ID token carries (services/token/id_tokens.py); userinfo gives tier and admin too.
ID_TOKEN_CLAIMS = (
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "azp",
    "at_hash",
    "preferred_username",
    "tenant_id",
)

# How a client may authenticate at the token and revocation endpoints ("none": public clients).
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")

# RFC 8693 section 3 token type identifiers the contract accepts.
TOKEN_TYPES = (
    "urn:ietf:params:oauth:token-type:access_token",
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
)

_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    return value


def rfc_fields(message: Message, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The set fields of `message` (scalars, enums and repeated ones only), named as in the proto."""
    document: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.name in exclude:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            raise TypeError(f"{field.full_name} is a message; exclude it or render it by hand")
        if field.is_repeated:
            document[field.name] = [_value(field, item) for item in value]
        else:
            document[field.name] = _value(field, value)
    return document


def _single_schema(field: FieldDescriptor) -> JsonSchema:
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
    if field.type in _INTEGERS:
        return {"type": "integer"}
    if field.type == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if field.type == FieldDescriptor.TYPE_STRING:
        return {"type": "string"}
    raise TypeError(f"{field.full_name} has no RFC JSON form")


def rfc_properties(message: type[Message], exclude: frozenset[str] = frozenset()) -> dict[str, JsonSchema]:
    """The JSON Schema properties of what `rfc_fields` renders for `message`."""
    properties: dict[str, JsonSchema] = {}
    for field in descriptor_of(message).fields:
        if field.name in exclude:
            continue
        single = _single_schema(field)
        properties[field.name] = {"type": "array", "items": single} if field.is_repeated else single
    return properties


def _form(grant_type: str, required: list[str], properties: dict[str, JsonSchema]) -> JsonSchema:
    return {
        "type": "object",
        "title": grant_type,
        "required": ["grant_type", *required],
        "properties": {
            "grant_type": {"const": grant_type},
            **_CLIENT_FIELDS,
            "scope": {"type": "string", "description": "space-delimited scopes (RFC 6749 section 3.3)"},
            **properties,
        },
    }


_CLIENT_FIELDS: dict[str, JsonSchema] = {
    "client_id": {"type": "string", "description": "client_secret_post or a public client; else HTTP Basic"},
    "client_secret": {"type": "string", "description": "client_secret_post; else HTTP Basic"},
}
_TOKEN_TYPE: JsonSchema = {"type": "string", "enum": list(TOKEN_TYPES)}
_HINT: JsonSchema = {"type": "string", "description": "access_token or refresh_token; others are ignored"}

TOKEN_FORM = Content(
    name="OAuthTokenRequest",
    media_type="application/x-www-form-urlencoded",
    schema={
        "description": "RFC 6749 section 4 and RFC 8693 section 2.1. The client authenticates with HTTP "
        "Basic (client_secret_basic) or the client_id and client_secret fields (client_secret_post).",
        "oneOf": [
            _form("client_credentials", [], {}),
            _form(
                "password",
                ["username", "password"],
                {"username": {"type": "string"}, "password": {"type": "string"}},
            ),
            _form("refresh_token", ["refresh_token"], {"refresh_token": {"type": "string"}}),
            _form(
                "authorization_code",
                ["code", "redirect_uri", "code_verifier"],
                {
                    "code": {"type": "string", "description": "the code the sign-in page sent back"},
                    "redirect_uri": {"type": "string", "description": "exactly the authorization request's"},
                    "code_verifier": {"type": "string", "description": "the PKCE verifier (RFC 7636 4.5)"},
                },
            ),
            _form(
                TOKEN_EXCHANGE,
                ["subject_token", "subject_token_type"],
                {
                    "subject_token": {"type": "string"},
                    "subject_token_type": _TOKEN_TYPE,
                    "actor_token": {"type": "string"},
                    "actor_token_type": _TOKEN_TYPE,
                    "resource": {"type": "array", "items": {"type": "string", "format": "uri"}},
                    "audience": {"type": "array", "items": {"type": "string"}},
                    "requested_token_type": _TOKEN_TYPE,
                },
            ),
        ],
        "discriminator": {"propertyName": "grant_type"},
    },
)

# The delegation chain is in the token's `act` claim; the response stays RFC 8693's.
TOKEN_RESPONSE_EXCLUDES = frozenset({"actor_chain"})

TOKEN_RESPONSE = Content(
    name="OAuthTokenResponse",
    schema={
        "description": "RFC 6749 section 5.1; token exchange adds issued_token_type (RFC 8693 2.2.1).",
        "type": "object",
        "required": ["access_token", "token_type"],
        "properties": {
            **rfc_properties(token_pb.IssueTokenResponse),
            **rfc_properties(token_pb.ExchangeTokenResponse, TOKEN_RESPONSE_EXCLUDES),
        },
    },
)

REVOKE_FORM = Content(
    name="OAuthRevocationRequest",
    media_type="application/x-www-form-urlencoded",
    schema={
        "description": "RFC 7009 section 2.1; the client authenticates as at the token endpoint.",
        "type": "object",
        "required": ["token"],
        "properties": {
            "token": {"type": "string"},
            "token_type_hint": _HINT,
            "token_id": {"type": "string", "description": "MACP: an access token's jti, instead of token"},
            **_CLIENT_FIELDS,
        },
    },
)

INTROSPECT_FORM = Content(
    name="OAuthIntrospectionRequest",
    media_type="application/x-www-form-urlencoded",
    schema={
        "description": "RFC 7662 section 2.1; the client authenticates as at the token endpoint.",
        "type": "object",
        "required": ["token"],
        "properties": {"token": {"type": "string"}, "token_type_hint": _HINT, **_CLIENT_FIELDS},
    },
)

# The MACP principal stays inside the mesh; introspection answers with the RFC's claims only.
INTROSPECTION_EXCLUDES = frozenset({"principal"})

INTROSPECTION = Content(
    name="OAuthIntrospectionResponse",
    schema={
        "description": "RFC 7662 section 2.2: only active=false for a token that is not valid.",
        "type": "object",
        "required": ["active"],
        "properties": rfc_properties(token_pb.IntrospectResponse, INTROSPECTION_EXCLUDES),
    },
)

CLIENT_METADATA = Content(
    name="OAuthClientMetadata",
    schema={
        "description": "RFC 7591 section 2; metadata the server does not understand is ignored. "
        "Registration needs `Authorization: Bearer <initial access token>`, but for open registration: "
        "a third-party client_credentials client with at most `tools:read tools:call`, of a tenant "
        "in MACP_TOKEN_OPEN_REGISTRATION_TENANTS (by `tenant_id`, or the only one listed).",
        "type": "object",
        "properties": {
            **rfc_properties(token_pb.ClientMetadata),
            "tenant_id": {
                "type": "string",
                "description": "MACP: the client's tenant; default the system's (open registration: the "
                "only tenant taking them)",
            },
        },
    },
)

CLIENT_INFORMATION = Content(
    name="OAuthClientInformation",
    schema={
        "description": "RFC 7591 section 3.2.1: the client's credentials and its metadata as registered.",
        "type": "object",
        "required": ["client_id"],
        "properties": {
            "client_id": {"type": "string"},
            "client_secret": {"type": "string", "description": "absent for public clients"},
            "client_id_issued_at": {"type": "integer", "description": "seconds since the epoch"},
            "client_secret_expires_at": {"type": "integer", "description": "0: the secret does not expire"},
            **rfc_properties(token_pb.ClientMetadata),
        },
    },
)

JWKS = Content(
    name="JsonWebKeySet",
    schema={
        "description": "RFC 7517 section 5: the keys tokens are signed with, the current one first.",
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {"type": "array", "items": {"type": "object", "properties": rfc_properties(token_pb.Jwk)}}
        },
    },
)

_STRINGS: JsonSchema = {"type": "array", "items": {"type": "string"}}

SERVER_METADATA = Content(
    name="OAuthAuthorizationServerMetadata",
    schema={
        "description": "RFC 8414 section 2.",
        "type": "object",
        "required": ["issuer", "token_endpoint", "jwks_uri", "response_types_supported"],
        "properties": {
            "issuer": {"type": "string", "format": "uri"},
            "authorization_endpoint": {"type": "string", "format": "uri"},
            "token_endpoint": {"type": "string", "format": "uri"},
            "jwks_uri": {"type": "string", "format": "uri"},
            "registration_endpoint": {"type": "string", "format": "uri"},
            "revocation_endpoint": {"type": "string", "format": "uri"},
            "introspection_endpoint": {"type": "string", "format": "uri"},
            "response_types_supported": _STRINGS,
            "response_modes_supported": _STRINGS,
            "code_challenge_methods_supported": _STRINGS,
            "authorization_response_iss_parameter_supported": {"type": "boolean"},
            "userinfo_endpoint": {"type": "string", "format": "uri"},
            "scopes_supported": _STRINGS,
            "grant_types_supported": _STRINGS,
            "token_endpoint_auth_methods_supported": _STRINGS,
            "revocation_endpoint_auth_methods_supported": _STRINGS,
            "introspection_endpoint_auth_methods_supported": _STRINGS,
        },
    },
)

OPENID_CONFIGURATION = Content(
    name="OpenIdProviderMetadata",
    schema={
        "description": "OpenID Connect Discovery 1.0 section 3: RFC 8414's metadata of the same issuer, "
        "plus what an OpenID Connect client needs to verify ID tokens and find userinfo.",
        "type": "object",
        "required": [
            "issuer",
            "authorization_endpoint",
            "token_endpoint",
            "jwks_uri",
            "response_types_supported",
            "subject_types_supported",
            "id_token_signing_alg_values_supported",
        ],
        "properties": {
            **SERVER_METADATA.schema["properties"],
            "subject_types_supported": _STRINGS,
            "id_token_signing_alg_values_supported": _STRINGS,
            "claims_supported": _STRINGS,
            "claims_parameter_supported": {"type": "boolean"},
            "request_parameter_supported": {"type": "boolean"},
            "request_uri_parameter_supported": {"type": "boolean"},
        },
    },
)


def server_metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 metadata of the authorization server `issuer` names (an issuer without a path)."""
    base = issuer.rstrip("/")
    return {
        "issuer": issuer,
        # The sign-in page: authorization code with PKCE, S256 only (services/edge/oauth/sign_in.py).
        "authorization_endpoint": f"{base}/oauth2/authorize",
        "token_endpoint": f"{base}/oauth2/token",
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "registration_endpoint": f"{base}/oauth2/register",
        "revocation_endpoint": f"{base}/oauth2/revoke",
        "introspection_endpoint": f"{base}/oauth2/introspect",
        "userinfo_endpoint": f"{base}/oauth2/userinfo",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        # RFC 9207: every authorization response names the issuer in `iss`.
        "authorization_response_iss_parameter_supported": True,
        "scopes_supported": [OPENID, *USER_SCOPES],
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }


def claims_supported() -> tuple[str, ...]:
    """The ID token's claims, then the ones only userinfo gives (read from its reply's fields)."""
    userinfo = [field.name for field in descriptor_of(token_pb.GetUserInfoResponse).fields]
    return (*ID_TOKEN_CLAIMS, *(name for name in userinfo if name not in ID_TOKEN_CLAIMS))


def openid_configuration(issuer: str) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 section 3 metadata of `issuer`: the RFC 8414 document, whose
    issuer it shares (section 4.3), with the ID token's facts added."""
    return {
        **server_metadata(issuer),
        # `sub` is the user's id, the same for every client (Core 8).
        "subject_types_supported": ["public"],
        # Signed with the access tokens' key (services/token/id_tokens.py).
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "claims_supported": list(claims_supported()),
        # Discovery 3 defaults these to false, true and true; MACP reads none of them.
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }


SIGN_IN_PAGE = Content(
    name="OAuthSignInPage",
    media_type="text/html",
    schema={
        "type": "string",
        "description": "The sign-in page (HTML), or on 303 a short page beside the Location header: the "
        "client's redirect URI with code, state and iss (RFC 9207), or error, error_description, state "
        "and iss.",
    },
)

SIGN_IN_ERROR_PAGE = Content(
    name="OAuthSignInErrorPage",
    media_type="text/html",
    schema={
        "type": "string",
        "description": "A page saying why: an unknown client or a redirect URI it did not register "
        "(never redirected), a forged form (403), wrong credentials (400, the page again) or a locked "
        "account (429, the page again, with Retry-After).",
    },
)

SIGN_IN_FORM = Content(
    name="OAuthSignInForm",
    media_type="application/x-www-form-urlencoded",
    schema={
        "description": "The sign-in page's form: the authorization request's parameters as it received "
        "them, the CSRF token (equal to the page's cookie), and the user's credentials.",
        "type": "object",
        "required": ["client_id", "redirect_uri", "csrf_token", "username", "password"],
        "properties": {
            "response_type": {"const": "code"},
            "client_id": {"type": "string"},
            "redirect_uri": {"type": "string"},
            "scope": {"type": "string"},
            "state": {"type": "string"},
            "code_challenge": {"type": "string"},
            "code_challenge_method": {"const": "S256"},
            "resource": {"type": "array", "items": {"type": "string", "format": "uri"}},
            "nonce": {"type": "string", "maxLength": MAX_NONCE_LENGTH},
            "csrf_token": {"type": "string"},
            "username": {"type": "string"},
            "password": {"type": "string"},
        },
    },
)

USERINFO = Content(
    name="OAuthUserInfo",
    schema={
        "description": "OpenID Connect Core 5.3.2 claims of the bearer token's user, and MACP's.",
        "type": "object",
        "required": ["sub", "preferred_username", "tenant_id", "tier", "admin"],
        "properties": rfc_properties(token_pb.GetUserInfoResponse),
    },
)
