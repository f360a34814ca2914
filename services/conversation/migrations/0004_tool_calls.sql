-- A TOOL message's call (a serialized macp.conversation.v1.ToolCallRecord; its result is the text),
-- and each conversation's limit on tool calls per turn (0: the platform default).
ALTER TABLE conversation_messages ADD COLUMN tool_call bytea;
ALTER TABLE conversation_conversations ADD COLUMN max_tool_calls smallint NOT NULL DEFAULT 0;
