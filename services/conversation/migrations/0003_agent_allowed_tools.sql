-- The tools an agent may use through the tool gateway (`<server>__<tool>` or `<server>__*`).
ALTER TABLE conversation_agents ADD COLUMN allowed_tools text[] NOT NULL DEFAULT '{}';
