-- Signing keys. The private key is PKCS#8 DER sealed with AES-256-GCM under
-- MACP_TOKEN_KEY_ENCRYPTION_KEY (never stored in the clear). Exactly one key is current (no
-- rotate_time); a rotated key stays published in the JWKS until retire_time.
CREATE TABLE token_signing_keys (
    kid          text        PRIMARY KEY,
    alg          text        NOT NULL,
    public_jwk   jsonb       NOT NULL,
    private_key  bytea       NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    rotate_time  timestamptz,
    retire_time  timestamptz,
    CHECK ((rotate_time IS NULL) = (retire_time IS NULL))
);
CREATE UNIQUE INDEX token_signing_keys_one_current ON token_signing_keys ((true)) WHERE rotate_time IS NULL;

-- Tenants and their billing tier (carried in every token as `tier`). `macp` is the system
-- tenant MACP's own clients belong to.
CREATE TABLE token_tenants (
    tenant_id    text        PRIMARY KEY,
    tier         text        NOT NULL CHECK (tier IN ('free', 'pro', 'enterprise')),
    display_name text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO token_tenants (tenant_id, tier, display_name) VALUES ('macp', 'enterprise', 'MACP system');

-- Local users (password grant). password_hash is `scrypt$n$r$p$salt$hash`.
CREATE TABLE token_users (
    user_id       text        PRIMARY KEY,
    tenant_id     text        NOT NULL REFERENCES token_tenants (tenant_id),
    username      text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now()
);

-- OAuth clients (RFC 7591). secret_hash is SHA-256 of a 256-bit server-generated secret, NULL for
-- public clients; metadata is the registered ClientMetadata as JSON.
CREATE TABLE token_clients (
    client_id    text        PRIMARY KEY,
    tenant_id    text        NOT NULL REFERENCES token_tenants (tenant_id),
    client_class text        NOT NULL CHECK (client_class IN ('internal', 'consumer', 'partner', 'third_party')),
    secret_hash  bytea,
    auth_method  text        NOT NULL,
    grant_types  text[]      NOT NULL,
    scopes       text[]      NOT NULL,
    metadata     jsonb       NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now()
);

-- Every access token issued (for revocation by id, refresh-family revocation and audit).
CREATE TABLE token_issued (
    jti         text        PRIMARY KEY,
    client_id   text        NOT NULL,
    tenant_id   text        NOT NULL,
    subject     text        NOT NULL,
    family_id   uuid,
    issue_time  timestamptz NOT NULL DEFAULT now(),
    expire_time timestamptz NOT NULL
);
CREATE INDEX token_issued_family ON token_issued (family_id) WHERE family_id IS NOT NULL;
CREATE INDEX token_issued_expiry ON token_issued (expire_time);

-- Refresh tokens, stored as SHA-256 of the opaque value. Each use rotates: the used row gets
-- use_time and a new row joins the same family. Presenting a used one revokes the family.
CREATE TABLE token_refresh (
    token_hash  bytea       PRIMARY KEY,
    family_id   uuid        NOT NULL,
    client_id   text        NOT NULL,
    user_id     text        NOT NULL REFERENCES token_users (user_id),
    scopes      text[]      NOT NULL,
    audiences   text[]      NOT NULL,
    issue_time  timestamptz NOT NULL DEFAULT now(),
    expire_time timestamptz NOT NULL,
    use_time    timestamptz,
    revoke_time timestamptz
);
CREATE INDEX token_refresh_family ON token_refresh (family_id);

-- Revoked access tokens, kept until they would have expired; Redis holds the same set
-- (`<prefix>revoked:<jti>`) for every verifier, and is refilled from here at start-up.
CREATE TABLE token_revocations (
    jti         text        PRIMARY KEY,
    reason      text        NOT NULL,
    revoke_time timestamptz NOT NULL DEFAULT now(),
    expire_time timestamptz NOT NULL
);
CREATE INDEX token_revocations_expiry ON token_revocations (expire_time);
