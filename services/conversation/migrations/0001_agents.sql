-- Agents: an LLM persona a tenant can put into conversations.
-- Rows are soft-deleted (delete_time) so a conversation's history keeps naming its speakers.
CREATE TABLE conversation_agents (
    id            uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    owner_id      text        NOT NULL,
    name          text        NOT NULL,
    provider      text        NOT NULL,
    model         text        NOT NULL,
    system_prompt text        NOT NULL DEFAULT '',
    generation    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    capabilities  text[]      NOT NULL DEFAULT '{}',
    bidding       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    etag          text        NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    delete_time   timestamptz
);

-- Every read is scoped to one tenant and pages in creation order.
CREATE INDEX conversation_agents_tenant_order ON conversation_agents (tenant_id, create_time, id)
    WHERE delete_time IS NULL;
