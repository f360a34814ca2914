-- An agent's voice settings (Agent.voice): the voice its answers are spoken in and the models of
-- its speech and transcription, as the proto's JSON, like its generation settings.
ALTER TABLE conversation_agents ADD COLUMN voice jsonb NOT NULL DEFAULT '{}'::jsonb;
