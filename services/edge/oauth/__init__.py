"""The edge's OAuth 2.0 endpoints (`/oauth2/*`, `/.well-known/*`): forms in, TokenService calls, and
answers and errors in RFC 6749's shapes."""
