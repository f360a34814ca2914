-- The MCP servers a tenant registered with the tool gateway. A server's name is the namespace of
-- its tools, so it is unique within the tenant.
CREATE TABLE tool_gateway_servers (
    id            uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    name          text        NOT NULL,
    url           text        NOT NULL,
    version_label text        NOT NULL DEFAULT '',
    auth          integer     NOT NULL,
    etag          text        NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

-- Every read is scoped to one tenant and pages in creation order.
CREATE INDEX tool_gateway_servers_tenant_order ON tool_gateway_servers (tenant_id, create_time, id);
