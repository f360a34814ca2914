"""The edge's WebSocket API, `/v1/ws` (docs/websocket.md): its own RFC 6455 protocol plugged into
uvicorn (link), the handshake, the connection and its states, frames, and one Converse stream per
subscribed conversation."""
