-- The tier each tenant's tokens carry, as metering last saw it: a tenant without a plan of its own
-- (metering_plans) is metered by the plan its tier names, even when an administrator of another
-- tenant is the one asking (services/metering/tenant_tiers.py).
CREATE TABLE metering_tenant_tiers (
    tenant_id  text        PRIMARY KEY,
    tier       smallint    NOT NULL,
    learn_time timestamptz NOT NULL DEFAULT now()
);
