"""The local provider server: a stand-in for Anthropic and OpenAI that speaks their wire protocols.

It answers `POST /v1/messages` (Anthropic Messages) and `POST /v1/chat/completions` (OpenAI Chat
Completions), as JSON or as server-sent events, with text derived deterministically from the
prompt and token counts that match that text. It plays tool use in both protocols by a fixed rule
(see `tool_use.py`): it calls the offered tools the user's message names, and answers their
results in text. It speaks OpenAI's audio API too, `POST /v1/audio/speech` and
`POST /v1/audio/transcriptions`, on real 24 kHz PCM that a deterministic codec makes from the text
and decodes back to exactly that text (see `audio_codec.py` and `audio_api.py`). The official SDKs
talk to it unchanged, so the agent proxy's real provider code paths run offline; tests inject
faults through it (see `behavior.py`).
"""
