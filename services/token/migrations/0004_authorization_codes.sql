-- Authorization codes of the sign-in page (RFC 6749 4.1), stored as SHA-256 of the opaque value.
-- A code is redeemed once (use_time); a second presentation sets reuse_time and revokes the
-- refresh family its first use started (family_id is chosen when the code is issued, so the
-- tokens of the first use can be found). Codes are swept an hour after they expire.
CREATE TABLE token_authorization_codes (
    code_hash      bytea       PRIMARY KEY,
    client_id      text        NOT NULL,
    redirect_uri   text        NOT NULL,
    code_challenge text        NOT NULL,
    user_id        text        NOT NULL REFERENCES token_users (user_id),
    scopes         text[]      NOT NULL,
    audiences      text[]      NOT NULL,
    family_id      uuid        NOT NULL,
    auth_time      timestamptz NOT NULL,
    expire_time    timestamptz NOT NULL,
    use_time       timestamptz,
    reuse_time     timestamptz
);
CREATE INDEX token_authorization_codes_expiry ON token_authorization_codes (expire_time);
