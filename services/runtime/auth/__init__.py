"""Token verification, shared by every MACP process: the strict JWS/JWT check (`jwt`), the signing
keys cache (`jwks`), revocations (`revocation`), the caching verifier built on them (`verifier`),
and the gRPC authenticator every service installs (`authenticator`).

The signing side lives in the token service; it calls `jwt.sign` and `revocation.mark_revoked` so
both sides share one definition of the token format and of the revocation key.
"""
