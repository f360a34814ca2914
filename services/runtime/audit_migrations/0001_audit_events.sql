-- The audit log (004's audit record): one row per sensitive action, written in the same
-- transaction as the action where the action is a Postgres write, so a rolled-back action leaves
-- no row and a replayed one (which changes nothing) adds none. Rows are never changed or removed:
-- the triggers below refuse UPDATE, DELETE and TRUNCATE for every role but a superuser who drops
-- them on purpose.
CREATE TABLE audit_events (
    id             uuid        PRIMARY KEY,
    event_time     timestamptz NOT NULL DEFAULT clock_timestamp(),
    request_id     text        NOT NULL,
    correlation_id text        NOT NULL,
    tenant_id      text        NOT NULL,
    subject        text        NOT NULL,
    -- Most recent actor first: [{"type": "agent", "id": "...", "client_id": "..."}, ...].
    actor_chain    jsonb       NOT NULL DEFAULT '[]',
    client_id      text        NOT NULL,
    action         text        NOT NULL,
    resource       text        NOT NULL,
    outcome        text        NOT NULL CHECK (outcome IN ('success', 'denied')),
    detail         jsonb       NOT NULL DEFAULT '{}',
    -- Set for actions outside Postgres (a quota refusal in Redis): the natural key of the action,
    -- so a retry of the same call cannot write it twice.
    dedupe_key     text        UNIQUE
);
-- ListAuditEvents reads one tenant newest first, optionally by action or subject.
CREATE INDEX audit_events_tenant_time ON audit_events (tenant_id, event_time DESC, id DESC);
CREATE INDEX audit_events_tenant_action ON audit_events (tenant_id, action, event_time DESC, id DESC);
CREATE INDEX audit_events_tenant_subject ON audit_events (tenant_id, subject, event_time DESC, id DESC);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
