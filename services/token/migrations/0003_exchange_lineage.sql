-- What an RFC 8693 exchange was made from: the subject token's and the actor token's ids. Revoking
-- a token revokes every live token exchanged from it, at any depth (services/token/revocation.py),
-- so each verifier's one revocation check per token still covers a revoked ancestor.
ALTER TABLE token_issued ADD COLUMN subject_jti text, ADD COLUMN actor_jti text;
CREATE INDEX token_issued_subject_jti ON token_issued (subject_jti) WHERE subject_jti IS NOT NULL;
CREATE INDEX token_issued_actor_jti ON token_issued (actor_jti) WHERE actor_jti IS NOT NULL;
