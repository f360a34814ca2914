-- Webhook subscriptions (services/conversation/webhooks.py): an endpoint of a tenant subscribed to
-- one conversation's events (conversation_id) or to every conversation of the tenant (NULL). The
-- signing secret is kept sealed; the delivery state is what the orchestrator's deliverers report.
-- Deleted for good: a removed subscription has nothing left to deliver or to show.
CREATE TABLE conversation_webhook_subscriptions (
    id                   uuid        PRIMARY KEY,
    tenant_id            text        NOT NULL,
    url                  text        NOT NULL,
    conversation_id      uuid        REFERENCES conversation_conversations (id),
    event_kinds          text[]      NOT NULL,
    sealed_secret        bytea       NOT NULL,
    etag                 text        NOT NULL,
    last_success_time    timestamptz,
    last_failure_time    timestamptz,
    last_failure_reason  text        NOT NULL DEFAULT '',
    consecutive_failures integer     NOT NULL DEFAULT 0,
    create_time          timestamptz NOT NULL DEFAULT now(),
    update_time          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX conversation_webhook_subscriptions_tenant_order
    ON conversation_webhook_subscriptions (tenant_id, create_time, id);

-- A delivery is recorded once an attempt at it fails: retried, then delivered or dead-lettered.
-- Keyed by its webhook id, which is the same on every attempt, so a repeated report of one attempt
-- is recognised (attempts only grow).
CREATE TABLE conversation_webhook_deliveries (
    subscription_id     uuid        NOT NULL REFERENCES conversation_webhook_subscriptions (id) ON DELETE CASCADE,
    id                  text        NOT NULL,
    tenant_id           text        NOT NULL,
    conversation_id     uuid        NOT NULL,
    event_id            text        NOT NULL,
    event_kind          text        NOT NULL,
    status              smallint    NOT NULL,
    attempts            integer     NOT NULL,
    last_failure_reason text        NOT NULL DEFAULT '',
    last_http_status    integer     NOT NULL DEFAULT 0,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, id)
);

CREATE INDEX conversation_webhook_deliveries_recent
    ON conversation_webhook_deliveries (subscription_id, update_time DESC);

-- A tenant-wide subscription is delivered from the tenant's conversations that got a message lately.
CREATE INDEX conversation_messages_tenant_recent ON conversation_messages (tenant_id, create_time);
