-- OpenID Connect's nonce (Core 3.1.2.1), kept with the code it was sent for and put unchanged in
-- the ID token its redemption issues (services/token/id_tokens.py); NULL when none was sent.
ALTER TABLE token_authorization_codes ADD COLUMN nonce text;
