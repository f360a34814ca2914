"""Postgres persistence of the metering service: usage events and rollups, dead letters, quota
deltas, plans. Every query is scoped by tenant."""
