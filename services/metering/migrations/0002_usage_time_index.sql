-- GetUsage over a period that is not whole billing months reads the raw events by time.
CREATE INDEX metering_usage_events_tenant_time ON metering_usage_events (tenant_id, event_time);
