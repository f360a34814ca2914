-- An agent of provider `a2a` is an outside A2A agent: its remote (card URL, how MACP authenticates,
-- its client's token URL, id and scope) as the RemoteAgent message's proto JSON, without the client
-- secret, which is kept apart, sealed (services/conversation/agent_remotes.py).
ALTER TABLE conversation_agents ADD COLUMN remote jsonb;
ALTER TABLE conversation_agents ADD COLUMN sealed_remote_secret bytea;
