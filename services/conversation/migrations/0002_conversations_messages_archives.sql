-- Conversations: one user talking with several agents of the same tenant.
-- Soft-deleted like agents (delete_time), so that usage and audit records keep a referent.
CREATE TABLE conversation_conversations (
    id                    uuid        PRIMARY KEY,
    tenant_id             text        NOT NULL,
    owner_id              text        NOT NULL,
    title                 text        NOT NULL DEFAULT '',
    participant_agent_ids uuid[]      NOT NULL,
    turn_policy           smallint    NOT NULL,
    coordinator_agent_id  uuid,
    max_agent_turns       integer     NOT NULL DEFAULT 0,
    double_texting_policy smallint    NOT NULL DEFAULT 0,
    status                smallint    NOT NULL,
    etag                  text        NOT NULL,
    archive_key           text        NOT NULL DEFAULT '',
    -- The sequence number of the last message appended: appends lock this row and take the next
    -- number, which keeps message sequences gap-free without a Postgres sequence per conversation.
    last_sequence         bigint      NOT NULL DEFAULT 0,
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now(),
    archive_time          timestamptz,
    delete_time           timestamptz
);

CREATE INDEX conversation_conversations_tenant_order ON conversation_conversations (tenant_id, create_time, id)
    WHERE delete_time IS NULL;
-- DeleteAgent asks "does an active conversation list this agent?"; ListConversations filters by agent.
CREATE INDEX conversation_conversations_participants ON conversation_conversations
    USING gin (participant_agent_ids) WHERE delete_time IS NULL;

-- Messages, keyed by the client-chosen id within their conversation (what makes appends idempotent).
CREATE TABLE conversation_messages (
    conversation_id uuid        NOT NULL REFERENCES conversation_conversations (id),
    id              uuid        NOT NULL,
    tenant_id       text        NOT NULL,
    sequence        bigint      NOT NULL,
    role            smallint    NOT NULL,
    author_id       text        NOT NULL DEFAULT '',
    text            text        NOT NULL,
    turn_id         uuid,
    create_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, id),
    UNIQUE (conversation_id, sequence)
);

-- Transcripts written to S3; the row is the record that the object exists and what it holds.
CREATE TABLE conversation_archives (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    conversation_id uuid        NOT NULL REFERENCES conversation_conversations (id),
    bucket          text        NOT NULL,
    object_key      text        NOT NULL,
    content_type    text        NOT NULL,
    size_bytes      bigint      NOT NULL,
    message_count   bigint      NOT NULL,
    last_sequence   bigint      NOT NULL,
    sha256          text        NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX conversation_archives_order ON conversation_archives (tenant_id, conversation_id, create_time, id);

-- ListAgents filters by capability tag.
CREATE INDEX conversation_agents_capabilities ON conversation_agents USING gin (capabilities)
    WHERE delete_time IS NULL;
