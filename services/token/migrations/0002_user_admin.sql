-- A tenant's administrators: only their tokens may carry `audit:read` (ListAuditEvents).
ALTER TABLE token_users ADD COLUMN admin boolean NOT NULL DEFAULT false;
