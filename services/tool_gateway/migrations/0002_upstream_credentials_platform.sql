-- How the gateway authenticates to a server registered with UPSTREAM_AUTH_STATIC (the header's
-- name) or UPSTREAM_AUTH_CLIENT_CREDENTIALS (the server's token endpoint and the gateway's client
-- there). The one secret of either (the header's value, the client secret) is kept only sealed
-- (AES-256-GCM under MACP_TOOL_GATEWAY_SEALING_KEY, bound to the server's id): never in plain text.
ALTER TABLE tool_gateway_servers
    ADD COLUMN credential_header text  NOT NULL DEFAULT '',
    ADD COLUMN oauth_token_url   text  NOT NULL DEFAULT '',
    ADD COLUMN oauth_client_id   text  NOT NULL DEFAULT '',
    ADD COLUMN oauth_scope       text  NOT NULL DEFAULT '',
    ADD COLUMN oauth_resource    text  NOT NULL DEFAULT '',
    ADD COLUMN sealed_secret     bytea;

-- Platform-wide servers (an operator's, shared with every tenant) are the rows of tenant '', a
-- tenant no token names: every read takes `tenant_id IN ($tenant, '')`, so it stays scoped to
-- one tenant (and the platform) by construction, and UNIQUE (tenant_id, name) keeps platform
-- names unique among themselves.
COMMENT ON COLUMN tool_gateway_servers.tenant_id IS 'the owning tenant; empty for a platform-wide server';
