-- Whether every answer of a conversation is also spoken (Conversation.speak_answers, docs/voice.md).
ALTER TABLE conversation_conversations ADD COLUMN speak_answers boolean NOT NULL DEFAULT false;
