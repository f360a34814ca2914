-- Usage events as recorded, one row per distinct event_id: the de-duplication key of every path
-- (the Kafka consumer and Commit) and the audit trail. Absent ids are '' so rollup keys never hold NULL.
CREATE TABLE metering_usage_events (
    event_id        uuid             PRIMARY KEY,
    tenant_id       text             NOT NULL,
    user_id         text             NOT NULL,
    agent_id        text             NOT NULL,
    conversation_id text             NOT NULL,
    turn_id         text             NOT NULL,
    event_type      smallint         NOT NULL,
    event_time      timestamptz      NOT NULL,
    billing_month   date             NOT NULL,  -- the first day of the event's calendar month, UTC
    input_tokens    bigint           NOT NULL,
    output_tokens   bigint           NOT NULL,
    duration_ms     bigint           NOT NULL,
    audio_seconds   double precision NOT NULL,
    storage_mb      double precision NOT NULL,
    provider        text             NOT NULL,
    model           text             NOT NULL,
    estimated       boolean          NOT NULL,
    payload         bytea            NOT NULL,  -- the serialized UsageEvent, actor chain included
    record_time     timestamptz      NOT NULL DEFAULT now()
);

-- Totals per tenant, billing month, user, agent, conversation, model and event type, kept in the
-- same transaction as the events they count, so queries and quota rebuilds never scan raw events.
CREATE TABLE metering_usage_rollups (
    tenant_id       text             NOT NULL,
    billing_month   date             NOT NULL,
    user_id         text             NOT NULL,
    agent_id        text             NOT NULL,
    conversation_id text             NOT NULL,
    model           text             NOT NULL,
    event_type      smallint         NOT NULL,
    event_count     bigint           NOT NULL,
    estimated_count bigint           NOT NULL,
    input_tokens    bigint           NOT NULL,
    output_tokens   bigint           NOT NULL,
    duration_ms     bigint           NOT NULL,
    audio_seconds   double precision NOT NULL,
    storage_mb      double precision NOT NULL,
    PRIMARY KEY (tenant_id, billing_month, user_id, agent_id, conversation_id, model, event_type)
);

-- Records that could not be decoded or failed validation, written in the batch's transaction and
-- then published to the dead-letter topic (an outbox). `search_from_offset` is the dead-letter
-- partition's end before publishing: a successor that finds a row unpublished after a crash reads
-- the topic from there to learn whether it went out, so each record is dead-lettered exactly once.
CREATE TABLE metering_dead_letters (
    source_topic          text        NOT NULL,
    source_partition      integer     NOT NULL,
    source_offset         bigint      NOT NULL,
    record_key            bytea,
    payload               bytea       NOT NULL,
    reason                text        NOT NULL,
    dead_letter_partition integer     NOT NULL,
    search_from_offset    bigint      NOT NULL,
    publish_time          timestamptz,
    PRIMARY KEY (source_topic, source_partition, source_offset)
);

CREATE INDEX metering_dead_letters_unpublished ON metering_dead_letters (source_topic, source_partition)
    WHERE publish_time IS NULL;

-- What each recorded batch adds to the Redis quota counters (an outbox): written with the events,
-- applied to Redis by an idempotent script, then deleted; a batch whose process died in between is
-- applied by the sweeper, and a counter rebuild marks the batches it already counted.
CREATE TABLE metering_quota_deltas (
    batch_id      uuid             NOT NULL,
    tenant_id     text             NOT NULL,
    billing_month date             NOT NULL,
    meter         smallint         NOT NULL,
    quantity      double precision NOT NULL,
    create_time   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, tenant_id, billing_month, meter)
);

CREATE INDEX metering_quota_deltas_tenant ON metering_quota_deltas (tenant_id, billing_month);

-- Each tenant's plan; a tenant without a row is on the free plan. FREE and PRO allowances come
-- from the catalog in code; ENTERPRISE rows carry their own (PlanAllowance messages as JSON).
CREATE TABLE metering_plans (
    tenant_id      text        PRIMARY KEY,
    tier           smallint    NOT NULL,
    allowances     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    effective_time timestamptz NOT NULL DEFAULT now()
);
