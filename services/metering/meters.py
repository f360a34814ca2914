"""What each usage event counts toward: its meter and its quantity in the meter's unit."""

from __future__ import annotations

from macp.common.v1 import usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb

# Event type -> the meter it counts toward. Voice synthesis and transcription share one meter.
METER_OF_TYPE: dict[int, int] = {
    usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN: pb.METER_AGENT_TURNS,
    usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION: pb.METER_ORCHESTRATIONS,
    usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS: pb.METER_VOICE_SECONDS,
    usage_pb2.USAGE_EVENT_TYPE_VOICE_TRANSCRIPTION: pb.METER_VOICE_SECONDS,
    usage_pb2.USAGE_EVENT_TYPE_STORAGE: pb.METER_STORAGE_MB,
    usage_pb2.USAGE_EVENT_TYPE_API_CALL: pb.METER_API_CALLS,
    usage_pb2.USAGE_EVENT_TYPE_TOOL_CALL: pb.METER_TOOL_CALLS,
}

# Meter -> (description, unit) as invoices print them.
METER_LABELS: dict[int, tuple[str, str]] = {
    pb.METER_AGENT_TURNS: ("Agent turns", "turns"),
    pb.METER_ORCHESTRATIONS: ("Orchestrations", "orchestrations"),
    pb.METER_VOICE_SECONDS: ("Voice (synthesis and transcription)", "seconds"),
    pb.METER_STORAGE_MB: ("Storage", "MB"),
    pb.METER_API_CALLS: ("API calls", "calls"),
    pb.METER_TOOL_CALLS: ("Tool calls", "calls"),
}


# Meter -> the event dimension it sums; every other meter counts events. The recording statement
# (store/ingest.py) computes quota deltas in SQL from this table too.
MEASURE_OF_METER: dict[int, str] = {
    pb.METER_VOICE_SECONDS: "audio_seconds",
    pb.METER_STORAGE_MB: "storage_mb",
}


def measure(event_type: int) -> str:
    """What an event of this type adds to its meter: `event_count`, or the dimension it sums."""
    return MEASURE_OF_METER.get(METER_OF_TYPE[event_type], "event_count")


def quantity(event_type: int, event_count: int, audio_seconds: float, storage_mb: float) -> float:
    """What `event_count` events of one type add to their meter: counted meters one per event,
    measured ones (voice, storage) their summed measure."""
    amounts = {"event_count": float(event_count), "audio_seconds": audio_seconds, "storage_mb": storage_mb}
    return amounts[measure(event_type)]


def meter_name(meter: int) -> str:
    return pb.Meter.Name(meter)  # type: ignore[arg-type]
